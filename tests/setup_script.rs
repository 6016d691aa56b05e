//! `scripts/setup.sh`, the first step of `make run` and `make test`, run against fake
//! `dpkg`, `apt-get`, `rustup`, `sudo`, `id` and `cargo` that record what they are asked
//! and keep a pretend machine state (installed packages and components) in files. The
//! PATH holds only the fakes and the few real tools the script uses (`grep`, `sed`), so
//! nothing on this machine is queried or installed.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup.sh");

/// A pretend machine: a directory of fake tools, a log of their calls and a state.
struct Machine {
    root: PathBuf,
}

static MACHINES: AtomicUsize = AtomicUsize::new(0);

const DPKG: &str = r#"#!/bin/bash
echo "dpkg $*" >> "$FAKE_ROOT/log"
[ "$1" = "-s" ] || exit 2
if [ -f "$FAKE_ROOT/state/deb-$2" ]; then
  printf 'Package: %s\nStatus: install ok installed\n' "$2"
elif [ -f "$FAKE_ROOT/state/removed-$2" ]; then
  printf 'Package: %s\nStatus: deinstall ok config-files\n' "$2"
else
  echo "dpkg-query: package '$2' is not installed" >&2
  exit 1
fi
"#;

const APT_GET: &str = r#"#!/bin/bash
echo "apt-get $*" >> "$FAKE_ROOT/log"
[ "$(id -u)" = 0 ] || { echo "apt-get: permission denied (not root)" >&2; exit 100; }
if [ "$1" = install ]; then
  shift
  for arg in "$@"; do
    case "$arg" in
      -*) ;;
      *)
        if [ -f "$FAKE_ROOT/state/unavailable-$arg" ]; then
          echo "E: Unable to locate package $arg" >&2
          exit 100
        fi
        [ -f "$FAKE_ROOT/state/broken-$arg" ] || : > "$FAKE_ROOT/state/deb-$arg"
        ;;
    esac
  done
fi
"#;

const RUSTUP: &str = r#"#!/bin/bash
echo "rustup $*" >> "$FAKE_ROOT/log"
if [ "$1 $2 $3" = "component list --installed" ]; then
  echo "cargo-x86_64-unknown-linux-gnu"
  for f in "$FAKE_ROOT"/state/component-*; do
    [ -e "$f" ] && echo "${f##*/component-}-x86_64-unknown-linux-gnu"
  done
  exit 0
fi
if [ "$1 $2" = "component add" ]; then
  shift 2
  for c in "$@"; do : > "$FAKE_ROOT/state/component-$c"; done
  exit 0
fi
exit 2
"#;

const SUDO: &str = r#"#!/bin/bash
echo "sudo $*" >> "$FAKE_ROOT/log"
FAKE_UID=0 exec "$@"
"#;

const ID: &str = r#"#!/bin/bash
[ "$1" = -u ] && echo "${FAKE_UID:-0}"
"#;

const CARGO: &str = r#"#!/bin/bash
echo "cargo $*" >> "$FAKE_ROOT/log"
"#;

impl Machine {
    /// A machine with `packages` installed and the `components` of the toolchain.
    fn new(packages: &[&str], components: &[&str]) -> Machine {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "setup-{}-{}",
            std::process::id(),
            MACHINES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("state")).unwrap();
        fs::write(root.join("log"), "").unwrap();
        for (name, text) in [
            ("dpkg", DPKG),
            ("apt-get", APT_GET),
            ("rustup", RUSTUP),
            ("sudo", SUDO),
            ("id", ID),
            ("cargo", CARGO),
        ] {
            write_executable(&root.join("bin").join(name), text);
        }
        // The real tools the script uses besides the fakes.
        for tool in ["grep", "sed"] {
            let real = which(tool);
            std::os::unix::fs::symlink(real, root.join("bin").join(tool)).unwrap();
        }
        let machine = Machine { root };
        for p in packages {
            machine.mark(&format!("deb-{p}"));
        }
        for c in components {
            machine.mark(&format!("component-{c}"));
        }
        machine
    }

    /// Adds a state file (`deb-P`, `removed-P`, `unavailable-P`, `broken-P`, `component-C`).
    fn mark(&self, name: &str) {
        fs::write(self.root.join("state").join(name), "").unwrap();
    }

    fn without(&self, tool: &str) {
        fs::remove_file(self.root.join("bin").join(tool)).unwrap();
    }

    /// Runs the script with `args` as user `uid`: (exit code, stderr, calls recorded).
    fn setup(&self, args: &[&str], uid: u32) -> (i32, String, Vec<String>) {
        let bash = which("bash");
        let output = Command::new(bash)
            .arg(SCRIPT)
            .args(args)
            .env_clear()
            .env("PATH", self.root.join("bin"))
            .env("FAKE_ROOT", &self.root)
            .env("FAKE_UID", uid.to_string())
            .output()
            .expect("runs bash");
        let log = fs::read_to_string(self.root.join("log")).unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            log.lines().map(str::to_owned).collect(),
        )
    }

    fn has(&self, name: &str) -> bool {
        self.root.join("state").join(name).exists()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn write_executable(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

fn which(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(tool);
        if path.exists() {
            return path;
        }
    }
    panic!("{tool} not found in /usr/bin, /bin or /usr/local/bin");
}

/// The calls that change the machine (not the `dpkg -s` and `component list` questions).
fn changes(log: &[String]) -> Vec<&str> {
    log.iter()
        .map(String::as_str)
        .filter(|l| l.starts_with("apt-get") || l.starts_with("sudo") || l.contains(" add "))
        .collect()
}

#[test]
fn a_fresh_machine_gets_libclang_gxx_chromium_and_the_components() {
    let m = Machine::new(&[], &[]);
    let (code, stderr, log) = m.setup(&["--test"], 0);
    assert_eq!(code, 0, "stderr: {stderr}\nlog: {log:#?}");
    assert_eq!(
        changes(&log),
        [
            "apt-get update -qq",
            "apt-get install -y -qq --no-install-recommends libclang-dev g++ chromium",
            "rustup component add rustfmt clippy",
        ],
        "stderr: {stderr}"
    );
    for p in ["deb-libclang-dev", "deb-g++", "deb-chromium"] {
        assert!(m.has(p), "{p} not installed");
    }
    assert!(m.has("component-rustfmt") && m.has("component-clippy"));
    // Every package was asked about, and asked again after the install (checked).
    for p in ["libclang-dev", "g++", "chromium"] {
        let asked = log.iter().filter(|l| *l == &format!("dpkg -s {p}")).count();
        assert_eq!(asked, 2, "dpkg -s {p}: {log:#?}");
    }
    assert!(
        stderr.contains("installing libclang-dev g++ chromium"),
        "{stderr}"
    );

    // Run again on the same machine: nothing more is installed.
    fs::write(m.root.join("log"), "").unwrap();
    let (code, stderr, log) = m.setup(&["--test"], 0);
    assert_eq!(code, 0, "{stderr}");
    assert!(changes(&log).is_empty(), "second run changed: {log:#?}");
    assert!(stderr.is_empty(), "second run said: {stderr}");
}

#[test]
fn without_test_only_the_build_prerequisites() {
    let m = Machine::new(&["g++"], &[]);
    let (code, stderr, log) = m.setup(&[], 0);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        changes(&log),
        [
            "apt-get update -qq",
            "apt-get install -y -qq --no-install-recommends libclang-dev",
        ]
    );
    assert!(!log.iter().any(|l| l.contains("chromium")), "{log:#?}");
    assert!(!log.iter().any(|l| l.starts_with("rustup")), "{log:#?}");
}

#[test]
fn a_package_removed_with_its_config_kept_counts_as_missing() {
    let m = Machine::new(&["g++", "chromium"], &["rustfmt", "clippy"]);
    m.mark("removed-libclang-dev");
    let (code, stderr, log) = m.setup(&["--test"], 0);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        changes(&log),
        [
            "apt-get update -qq",
            "apt-get install -y -qq --no-install-recommends libclang-dev",
        ]
    );
}

#[test]
fn a_user_other_than_root_installs_through_sudo() {
    let m = Machine::new(&["libclang-dev", "g++"], &["rustfmt"]);
    let (code, stderr, log) = m.setup(&["--test"], 1000);
    assert_eq!(code, 0, "{stderr}\n{log:#?}");
    assert_eq!(
        changes(&log),
        [
            "sudo apt-get update -qq",
            "apt-get update -qq",
            "sudo apt-get install -y -qq --no-install-recommends chromium",
            "apt-get install -y -qq --no-install-recommends chromium",
            "rustup component add clippy",
        ]
    );
}

#[test]
fn a_failed_install_is_an_error_naming_the_package() {
    let m = Machine::new(&["g++"], &[]);
    m.mark("unavailable-libclang-dev");
    let (code, stderr, _) = m.setup(&[], 0);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("apt-get install libclang-dev failed"),
        "{stderr}"
    );

    // apt-get answers 0 but the package is still not there: caught by asking dpkg again.
    let m = Machine::new(&["g++"], &[]);
    m.mark("broken-libclang-dev");
    let (code, stderr, _) = m.setup(&[], 0);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("libclang-dev is still not installed after apt-get install"),
        "{stderr}"
    );
}

#[test]
fn no_cargo_no_apt_and_bad_arguments_are_clear_errors() {
    let m = Machine::new(&[], &[]);
    m.without("cargo");
    let (code, stderr, log) = m.setup(&[], 0);
    assert_eq!(code, 1);
    assert!(stderr.contains("cargo is required"), "{stderr}");
    assert!(changes(&log).is_empty());

    let m = Machine::new(&[], &[]);
    m.without("apt-get");
    let (code, stderr, _) = m.setup(&[], 0);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("missing libclang-dev g++ and there is no apt-get"),
        "{stderr}"
    );

    let m = Machine::new(&[], &[]);
    let (code, stderr, log) = m.setup(&["--tset"], 0);
    assert_eq!(code, 1);
    assert!(stderr.contains("unknown argument --tset"), "{stderr}");
    assert!(log.is_empty(), "{log:#?}");
}

#[test]
fn without_rustup_the_components_must_already_answer() {
    let m = Machine::new(&["libclang-dev", "g++", "chromium"], &[]);
    m.without("rustup");
    let (code, stderr, log) = m.setup(&["--test"], 0);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        log.iter()
            .filter(|l| l.starts_with("cargo"))
            .collect::<Vec<_>>(),
        ["cargo fmt --version", "cargo clippy --version"]
    );
}
