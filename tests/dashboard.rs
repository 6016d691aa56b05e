//! The live dashboard at `/` of `--serve`, in a real browser: the server is started with a
//! bearer token, data is posted, headless Chromium opens `/#token=…` and its rendered DOM
//! is checked against `/models` and `/model`: every key listed (a key with HTML in it
//! shown as text), the coefficient chart's points equal to the final models (the older
//! windows reach the page only through `/models/stream`), the watermark shown. A
//! screenshot is saved as `target/dashboard.png`.
//!
//! Chromium is Debian's `chromium` (`scripts/setup.sh --test` installs it; or
//! `TRIBUTARY_CHROMIUM=/path`); where it cannot be found the browser test says so and
//! passes, except under CI (`CI` set), where it fails. Everything is on 127.0.0.1 and
//! bounded in time; Chromium and the server are killed on every path out.

mod common;

use common::http::*;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "dashboard-test-token-7f3a";
const D: usize = 2;
const WINDOW_MS: i64 = 10_000;
const BROWSER_WAIT: Duration = Duration::from_secs(90);

/// The browser, or `None` (with the reason printed) where it is not installed.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TRIBUTARY_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let why = "dashboard browser test skipped: no chromium, chromium-browser or google-chrome \
               on PATH (scripts/setup.sh --test installs Debian's chromium; or set \
               TRIBUTARY_CHROMIUM)";
    assert!(std::env::var_os("CI").is_none(), "{why}; CI must run it");
    eprintln!("{why}");
    None
}

/// Runs headless Chromium with `args` then `url`, bounded by [`BROWSER_WAIT`]; its
/// stdout.
fn run_chromium(chrome: &Path, dir: &TempDir, name: &str, args: &[String], url: &str) -> String {
    let stdout = dir.path(&format!("{name}.stdout"));
    let stderr = dir.path(&format!("{name}.stderr"));
    // Killed on drop (a failed wait included).
    let mut browser = Reaped::spawn(
        Command::new(chrome)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!(
                "--user-data-dir={}",
                dir.path(&format!("{name}-profile")).display()
            ))
            .args(args)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap()),
    );
    let status = browser.wait_within(BROWSER_WAIT).unwrap_or_else(|| {
        panic!(
            "chromium did not finish within {BROWSER_WAIT:?}; stderr:\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    });
    assert!(
        status.success(),
        "chromium {status}; stderr:\n{}",
        std::fs::read_to_string(&stderr).unwrap_or_default()
    );
    std::fs::read_to_string(&stdout).unwrap()
}

/// The DOM of `url` once `ready` says so: the page's reads race Chromium's virtual clock
/// on a loaded machine, so it is loaded again (at most 5 times, bounded in time) until
/// then; the last DOM either way (the checks that follow say what is missing).
fn dump_until(
    chrome: &Path,
    dir: &TempDir,
    name: &str,
    url: &str,
    ready: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + BROWSER_WAIT;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dom = run_chromium(
            chrome,
            dir,
            &format!("{name}-{attempt}"),
            &["--virtual-time-budget=8000".into(), "--dump-dom".into()],
            url,
        );
        if ready(&dom) || attempt == 5 || Instant::now() > deadline {
            return dom;
        }
    }
}

/// Runs with a token; `GET path` with the bearer token.
fn authorized_get(server: &Server, agent: &ureq::Agent, path: &str) -> Resp {
    finish(
        agent
            .get(&server.url(path))
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call(),
    )
    .unwrap_or_else(|e| server.fail(&format!("GET {path}: {e}")))
}

/// Every element `<TAG …>` of `html` with its attributes (entities decoded).
fn elements(html: &str, tag: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        let end = rest.find('>').expect("element closes");
        found.push(attributes(&rest[..end]));
        rest = &rest[end..];
    }
    found
}

fn attributes(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let mut rest = text.trim_start();
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_owned();
        let value_start = eq + 2;
        let close = rest[value_start..].find('"').expect("attribute closes") + value_start;
        map.insert(name, unescape(&rest[value_start..close]));
        rest = rest[close + 1..].trim_start();
    }
    map
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// The text of the element with `id` (up to its first child tag).
fn text_of(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the DOM"));
    let start = at + html[at..].find('>').unwrap() + 1;
    let end = start + html[start..].find('<').unwrap();
    unescape(&html[start..end])
}

/// Rows of four keys (one with HTML in its name), one per key and second, over 60 s,
/// with per-key coefficients.
fn rows() -> Vec<Row> {
    let keys = ["alpha", "beta", "gamma", "k<b>3</b>"];
    let mut rows = Vec::new();
    for i in 0..60i64 {
        for (k, key) in keys.iter().enumerate() {
            let x0 = ((i * 7 + k as i64 * 3) % 11) as f64 / 4.0;
            let x1 = ((i * 5 + k as i64) % 13) as f64 / 3.0 - 2.0;
            let noise = ((i * 31 + k as i64 * 17) % 9) as f64 / 50.0 - 0.08;
            let b = [0.5 + k as f64, 2.0 - 0.5 * k as f64, -1.0 + 0.25 * k as f64];
            rows.push(Row {
                ts: T0 + i * 1000,
                key: key.to_string(),
                x: vec![x0, x1],
                y: b[0] + b[1] * x0 + b[2] * x1 + noise,
            });
        }
    }
    rows
}

#[test]
fn the_dashboard_shows_every_key_its_coefficients_and_the_watermark_in_chromium() {
    let Some(chrome) = chromium() else { return };
    let dir = TempDir::new("dashboard");
    let token_file = dir.path("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let out = dir.path("models.jsonl");
    let args = with(
        http_args(&out, D, Win::Tumbling(WINDOW_MS), 0, 1),
        &["--token-file", token_file.to_str().unwrap()],
    );
    let server = Server::start(&dir, &args);
    let agent = agent();

    // The data, posted with the token; every key's windows up to 50 s final.
    let rows = rows();
    let posted = finish(
        agent
            .post(&server.url("/data"))
            .header("Content-Type", "text/csv")
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .send(&csv_text(&rows, D)),
    )
    .unwrap();
    assert_eq!(posted.status, 200, "{}", posted.body);
    let keys: Vec<String> = {
        let mut k: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
        k.sort();
        k.dedup();
        k
    };
    let newest_end = T0 + 50_000;
    let models = server.wait_for("every key's last final window", || {
        let v = authorized_get(&server, &agent, "/models").json();
        let models = v["models"].as_array().cloned().unwrap_or_default();
        let done = models
            .iter()
            .filter(|m| m["final"]["window_end"].as_i64() == Some(newest_end))
            .count();
        match done == keys.len() {
            true => Ok(v),
            false => Err(format!(
                "{done} of {} keys final through {newest_end}",
                keys.len()
            )),
        }
    });

    // The page without the token shows no data and asks for it.
    let url = server.url("/");
    let dom = dump_until(&chrome, &dir, "no-token", &url, |dom| {
        dom.contains("data-state=\"token\"")
    });
    assert!(
        dom.contains("data-state=\"token\""),
        "without the token: {dom}"
    );
    assert!(
        elements(&dom, "tr")
            .iter()
            .all(|tr| !tr.contains_key("data-key"))
    );

    // With the token in the fragment, the chosen key: its finals by window end.
    let chosen = "k<b>3</b>";
    let fragment = format!("#token={TOKEN}&key={}", "k%3Cb%3E3%3C%2Fb%3E");
    let want_points = 5 * (D + 1);
    let dom = dump_until(&chrome, &dir, "dom", &format!("{url}{fragment}"), |dom| {
        elements(dom, "circle")
            .iter()
            .filter(|c| c.contains_key("data-coef"))
            .count()
            >= want_points
    });
    std::fs::write(dir.path("dashboard.html"), &dom).unwrap();
    assert!(dom.contains("data-state=\"live\""), "status: {dom}");
    // The key with HTML in its name is text, not markup.
    assert!(!dom.contains("<b>3</b>"), "a key was parsed as HTML");

    // Every key listed, with its newest final's window end and n, as /models says.
    let listed: BTreeMap<String, BTreeMap<String, String>> = elements(&dom, "tr")
        .into_iter()
        .filter_map(|tr| Some((tr.get("data-key")?.clone(), tr)))
        .collect();
    assert_eq!(
        listed.keys().cloned().collect::<Vec<_>>(),
        keys,
        "keys listed"
    );
    for m in models["models"].as_array().unwrap() {
        let key = m["key"].as_str().unwrap();
        let tr = &listed[key];
        assert_eq!(tr["data-final-end"], m["final"]["window_end"].to_string());
        assert_eq!(tr["data-final-n"], m["final"]["n"].to_string());
    }

    // The chart's points: one per coefficient and final window of the chosen key, each
    // equal to the model's coefficient (the JSON number, to the last digit).
    let finals: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|m| m["key"] == chosen && m["final"] == true)
        .collect();
    assert_eq!(finals.len(), 5, "finals of {chosen} in --out");
    let points: Vec<BTreeMap<String, String>> = elements(&dom, "circle")
        .into_iter()
        .filter(|c| c.contains_key("data-coef"))
        .collect();
    assert_eq!(
        points.len(),
        finals.len() * (D + 1),
        "chart points: {points:#?}"
    );
    for m in &finals {
        let end = m["window_end"].as_i64().unwrap().to_string();
        for (i, coef) in m["coef"].as_array().unwrap().iter().enumerate() {
            let point = points
                .iter()
                .find(|p| p["data-window-end"] == end && p["data-coef"] == i.to_string())
                .unwrap_or_else(|| panic!("no point of b{i} at window end {end}"));
            assert_eq!(point["data-key"], chosen);
            let shown: f64 = point["data-value"].parse().unwrap();
            assert_eq!(shown, coef.as_f64().unwrap(), "b{i} at {end}");
        }
    }
    // The newest point is /model's final model; the older ones came through the stream.
    let model = authorized_get(&server, &agent, "/model?key=k%3Cb%3E3%3C%2Fb%3E").json();
    for (i, coef) in model["final"]["coef"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let point = points
            .iter()
            .find(|p| {
                p["data-window-end"] == newest_end.to_string() && p["data-coef"] == i.to_string()
            })
            .unwrap();
        assert_eq!(
            point["data-value"].parse::<f64>().unwrap(),
            coef.as_f64().unwrap()
        );
    }
    for p in &points {
        if p["data-window-end"] != newest_end.to_string() {
            assert_eq!(p["data-via"], "stream", "{p:?}");
        }
    }
    // r² and n over the same windows.
    for (chart, field) in [("chart-r2", "r2"), ("chart-n", "n")] {
        let svg = elements(&dom, "svg")
            .into_iter()
            .find(|s| s.get("id").map(String::as_str) == Some(chart))
            .unwrap();
        assert_eq!(svg["data-points"], finals.len().to_string(), "{chart}");
        assert!(dom.contains(&format!(
            "data-value=\"{}\"",
            finals[0][field].as_f64().unwrap()
        )));
    }

    // The watermark, as /metrics has it.
    let shown = elements(&dom, "span")
        .into_iter()
        .chain(elements(&dom, "div"))
        .find(|e| e.get("id").map(String::as_str) == Some("watermark"))
        .expect("#watermark");
    assert_eq!(
        shown["data-ms"].parse::<f64>().ok(),
        authorized_get(&server, &agent, "/metrics")
            .body
            .lines()
            .find_map(|l| l.strip_prefix("tributary_watermark_ms ")?.parse().ok()),
        "the watermark shown"
    );
    // T0 + 59 s: 2023-11-14T22:14:19Z.
    assert_eq!(text_of(&dom, "watermark"), "22:14:19.000");
    assert_eq!(text_of(&dom, "watermark-date"), "2023-11-14");

    // A screenshot for people: target/dashboard.png.
    let png = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let _ = std::fs::remove_file(&png);
    // The checkout's own target/, even when CARGO_TARGET_DIR builds elsewhere.
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    run_chromium(
        &chrome,
        &dir,
        "screenshot",
        &[
            "--virtual-time-budget=8000".into(),
            "--window-size=1280,1000".into(),
            format!("--screenshot={}", png.display()),
        ],
        &format!("{url}#token={TOKEN}&key=beta"),
    );
    let bytes = std::fs::read(&png).expect("the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "a PNG"
    );
}

#[test]
fn the_page_is_compiled_in_host_checked_and_off_with_no_dashboard() {
    let dir = TempDir::new("dashboard-page");
    let out = dir.path("models.jsonl");
    let token_file = dir.path("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let args = with(
        http_args(&out, D, Win::Tumbling(WINDOW_MS), 0, 1),
        &["--token-file", token_file.to_str().unwrap()],
    );
    let server = Server::start(&dir, &args);
    let agent = agent();
    // The page needs no token (it holds no data) but an allowed Host.
    let page = server.get("/");
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.content_type.as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(page.body.contains("/models/stream") && page.body.contains("<svg"));
    // No address outside the server: no http(s) URL but the SVG namespace.
    for (at, _) in page.body.match_indices("http") {
        let rest = &page.body[at..];
        assert!(
            rest.starts_with("http://www.w3.org/2000/svg")
                || !rest.starts_with("http:") && !rest.starts_with("https:"),
            "the page names an address: {}",
            &rest[..rest.len().min(60)]
        );
    }
    let raw = agent.get(&server.url("/")).call().unwrap();
    let policy = raw
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        policy.contains("connect-src 'self'") && policy.contains("default-src 'none'"),
        "{policy}"
    );
    let foreign = finish(
        agent
            .get(&server.url("/"))
            .header("Host", "evil.example")
            .call(),
    )
    .unwrap();
    foreign.assert_error(403, "a foreign Host");
    // The data still needs the token.
    server
        .get("/models")
        .assert_error(401, "/models without the token");
    drop(server);

    let server = Server::start(&dir, &with(args, &["--no-dashboard"]));
    server.get("/").assert_error(404, "/ with --no-dashboard");
}
