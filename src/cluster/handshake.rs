//! The cluster's own handshake: every connection between two processes, made before timely
//! has it, proves the cluster token (HMAC-SHA256 over both greetings) and the cluster's
//! shape, and a stranger's bytes are dropped with a warning (see the module above).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Longest a peer may take over its part of the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once on a listening process; further connections are
/// dropped until some end.
const MAX_HANDSHAKES: usize = 64;

/// Dropped connections reported one by one; after these, one in every 1000.
const REPORT_FIRST: u64 = 10;

/// The first bytes of every greeting (the protocol's version is its last character).
const MAGIC: &[u8; 8] = b"TRBCLST1";

/// Server greeting: magic, index, processes, nonce.
const SERVER_HELLO: usize = 8 + 8 + 8 + 16;

/// Client greeting: magic, index, processes, nonce, HMAC.
const CLIENT_HELLO: usize = 8 + 8 + 8 + 16 + 32;

/// Answers to a client greeting.
const ACCEPTED: u8 = 0;
const WRONG_TOKEN: u8 = 1;
const WRONG_SHAPE: u8 = 2;
const DUPLICATE: u8 = 3;

/// One socket per process, `None` at this process's index, in the order
/// [`initialize_networking_from_sockets`] wants.
pub(super) fn connect_cluster(
    addresses: &[String],
    me: usize,
    token: &[u8],
) -> Result<Vec<Option<TcpStream>>, String> {
    let n = addresses.len();
    // Bind first: a port in use is an error at once.
    let listeners = if me + 1 < n {
        addresses[me]
            .split_whitespace()
            .map(|a| {
                let l = TcpListener::bind(a)
                    .map_err(|e| format!("cluster: process {me}: cannot listen on {a}: {e}"))?;
                l.set_nonblocking(true)
                    .map_err(|e| format!("cluster: {a}: {e}"))?;
                Ok(l)
            })
            .collect::<Result<Vec<_>, String>>()?
    } else {
        Vec::new()
    };
    // Connect to the processes before this one, on another thread.
    let (connected_tx, connected_rx) = mpsc::channel();
    {
        let addresses = addresses.to_vec();
        let token = token.to_vec();
        std::thread::Builder::new()
            .name("cluster-connect".into())
            .spawn(move || {
                let result = (0..me)
                    .map(|j| connect_peer(&addresses[j], me, j, n, &token))
                    .collect::<Result<Vec<_>, String>>();
                let _ = connected_tx.send(result);
            })
            .map_err(|e| e.to_string())?;
    }
    let mut later: Vec<Option<TcpStream>> = (me + 1..n).map(|_| None).collect();
    let mut earlier: Option<Vec<TcpStream>> = None;
    let claimed = Arc::new(Mutex::new(vec![false; n]));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let (accepted_tx, accepted_rx) = mpsc::channel::<(usize, TcpStream)>();
    if !listeners.is_empty() {
        tracing::info!(
            "cluster: process {me} listening on {} for processes {}..{}",
            addresses[me],
            me + 1,
            n - 1
        );
    }
    let mut last_note = Instant::now();
    while earlier.is_none() || later.iter().any(Option::is_none) {
        let mut busy = false;
        for listener in &listeners {
            match listener.accept() {
                Ok((stream, from)) => {
                    busy = true;
                    if handshakes.fetch_add(1, Ordering::SeqCst) >= MAX_HANDSHAKES {
                        handshakes.fetch_sub(1, Ordering::SeqCst);
                        report_drop(&dropped, me, from, "too many handshakes in progress");
                        continue;
                    }
                    let (key, taken, running, refused, tx) = (
                        token.to_vec(),
                        Arc::clone(&claimed),
                        Arc::clone(&handshakes),
                        Arc::clone(&dropped),
                        accepted_tx.clone(),
                    );
                    let spawned = std::thread::Builder::new()
                        .name("cluster-handshake".into())
                        .spawn(move || {
                            match serve_handshake(stream, me, n, &key, &taken) {
                                Ok((peer, stream)) => {
                                    let _ = tx.send((peer, stream));
                                }
                                Err(reason) => report_drop(&refused, me, from, &reason),
                            }
                            running.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        handshakes.fetch_sub(1, Ordering::SeqCst);
                        report_drop(&dropped, me, from, "cannot start a thread");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::warn!("cluster: process {me}: accept failed: {e}");
                }
            }
        }
        while let Ok((peer, stream)) = accepted_rx.try_recv() {
            busy = true;
            later[peer - me - 1] = Some(stream);
        }
        if earlier.is_none() {
            match connected_rx.try_recv() {
                Ok(result) => earlier = Some(result?),
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    return Err("cluster: the connecting thread ended".into());
                }
            }
        }
        if !busy {
            if last_note.elapsed() >= Duration::from_secs(10) {
                let missing: Vec<usize> = (me + 1..n)
                    .filter(|&p| later[p - me - 1].is_none())
                    .collect();
                if !missing.is_empty() {
                    tracing::info!(
                        "cluster: process {me} still waiting for processes {missing:?} to connect to {}",
                        addresses[me]
                    );
                }
                last_note = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // The listeners close here: nothing more is accepted.
    drop(listeners);
    let mut sockets: Vec<Option<TcpStream>> =
        earlier.unwrap_or_default().into_iter().map(Some).collect();
    sockets.push(None);
    sockets.extend(later);
    for s in sockets.iter().flatten() {
        s.set_read_timeout(None)
            .and_then(|()| s.set_write_timeout(None))
            .and_then(|()| s.set_nodelay(true))
            .map_err(|e| format!("cluster: {e}"))?;
    }
    Ok(sockets)
}

fn report_drop(dropped: &AtomicU64, me: usize, from: SocketAddr, reason: &str) {
    let k = dropped.fetch_add(1, Ordering::Relaxed) + 1;
    if k <= REPORT_FIRST || k.is_multiple_of(1000) {
        tracing::warn!(
            "cluster: process {me} dropped a connection from {from}: {reason} \
             ({k} dropped so far)"
        );
    }
}

/// Why a handshake did not end in a connection.
enum Failed {
    /// Try again (the peer is not up, or the connection broke).
    Retry(String),
    /// Stop the process: the peer refused this one, or is not a peer.
    Fatal(String),
}

/// Connects to process `j` at `address`, retrying until it is up, and runs the client
/// side of the handshake.
fn connect_peer(
    address: &str,
    me: usize,
    j: usize,
    n: usize,
    token: &[u8],
) -> Result<TcpStream, String> {
    let started = Instant::now();
    let mut noted: Option<Instant> = None;
    let mut pause = Duration::from_millis(50);
    loop {
        let failure = match TcpStream::connect(address) {
            Ok(mut stream) => match client_handshake(&mut stream, me, j, n, token) {
                Ok(()) => return Ok(stream),
                Err(Failed::Fatal(e)) => return Err(e),
                Err(Failed::Retry(e)) => e,
            },
            Err(e) => e.to_string(),
        };
        if noted.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            tracing::info!(
                "cluster: process {me} waiting for process {j} at {address} ({failure}); \
                 retrying ({:.0} s so far)",
                started.elapsed().as_secs_f64()
            );
            noted = Some(Instant::now());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Reads exactly `buf.len()` bytes; a timeout or an early end is an error naming `what`.
fn read_all(stream: &mut TcpStream, buf: &mut [u8], what: &str) -> Result<(), String> {
    stream.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("the connection ended before its {what}"),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "no complete {what} within {} s",
            HANDSHAKE_TIMEOUT.as_secs()
        ),
        _ => format!("reading its {what}: {e}"),
    })
}

fn set_timeouts(stream: &TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The client side: this process `me` connects to process `j`.
fn client_handshake(
    stream: &mut TcpStream,
    me: usize,
    j: usize,
    n: usize,
    token: &[u8],
) -> Result<(), Failed> {
    let retry = |e: String| Failed::Retry(e);
    set_timeouts(stream).map_err(|e| retry(e.to_string()))?;
    let mut hello = [0; SERVER_HELLO];
    read_all(stream, &mut hello, "greeting").map_err(retry)?;
    if &hello[..8] != MAGIC {
        return Err(Failed::Fatal(format!(
            "cluster: the process at {} (process {j} in the hostfile) is not a Tributary \
             cluster process of this version: it greeted with {}",
            stream
                .peer_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            crate::source::lines::echo(&hello[..8])
        )));
    }
    let (their_index, their_n) = (u64_at(&hello, 8), u64_at(&hello, 16));
    if their_index != j as u64 || their_n != n as u64 {
        return Err(Failed::Fatal(format!(
            "cluster: process {j}'s address in the hostfile is served by process \
             {their_index} of {their_n}, but this process {me} expects process {j} of {n}: \
             every process needs the same hostfile and -n"
        )));
    }
    let server_nonce: [u8; 16] = hello[24..40].try_into().expect("16 bytes");
    let nonce = random_nonce().map_err(|e| Failed::Fatal(format!("cluster: {e}")))?;
    let mut reply = Vec::with_capacity(CLIENT_HELLO);
    reply.extend_from_slice(MAGIC);
    reply.extend_from_slice(&(me as u64).to_be_bytes());
    reply.extend_from_slice(&(n as u64).to_be_bytes());
    reply.extend_from_slice(&nonce);
    reply.extend_from_slice(&proof(token, b"client", j, me, n, &server_nonce, &nonce));
    stream.write_all(&reply).map_err(|e| retry(e.to_string()))?;
    let mut status = [0; 1];
    read_all(stream, &mut status, "answer").map_err(retry)?;
    let address = stream
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    match status[0] {
        ACCEPTED => {}
        WRONG_TOKEN => {
            return Err(Failed::Fatal(format!(
                "cluster: process {j} at {address} refused this process {me}: the cluster \
                 token differs (every process needs --cluster-token-file with the same \
                 secret; this process has {})",
                if token.is_empty() { "none" } else { "one" }
            )));
        }
        WRONG_SHAPE => {
            return Err(Failed::Fatal(format!(
                "cluster: process {j} at {address} refused this process {me} of {n}: it runs \
                 with another -n"
            )));
        }
        DUPLICATE => {
            return Err(Failed::Fatal(format!(
                "cluster: process {j} at {address} refused this process {me}: a process {me} \
                 is already connected to it (two processes started with -p {me}?)"
            )));
        }
        other => {
            return Err(Failed::Fatal(format!(
                "cluster: process {j} at {address} answered {other}, not a handshake answer"
            )));
        }
    }
    let mut their_proof = [0; 32];
    read_all(stream, &mut their_proof, "proof").map_err(retry)?;
    if !same(
        &their_proof,
        &proof(token, b"server", j, me, n, &server_nonce, &nonce),
    ) {
        return Err(Failed::Fatal(format!(
            "cluster: the process at {address} accepted this process {me} but did not prove \
             it holds the cluster token: it is not process {j} of this cluster"
        )));
    }
    Ok(())
}

/// The server side: a connection accepted by process `me`; returns the peer's index and
/// the stream, or why it was dropped.
fn serve_handshake(
    mut stream: TcpStream,
    me: usize,
    n: usize,
    token: &[u8],
    claimed: &Mutex<Vec<bool>>,
) -> Result<(usize, TcpStream), String> {
    // Accepted sockets of a non-blocking listener are blocking on Linux, but not
    // everywhere.
    stream
        .set_nonblocking(false)
        .and_then(|()| set_timeouts(&stream))
        .map_err(|e| e.to_string())?;
    let nonce = random_nonce()?;
    let mut hello = Vec::with_capacity(SERVER_HELLO);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&(me as u64).to_be_bytes());
    hello.extend_from_slice(&(n as u64).to_be_bytes());
    hello.extend_from_slice(&nonce);
    stream
        .write_all(&hello)
        .map_err(|e| format!("sending the greeting: {e}"))?;
    let mut theirs = [0; CLIENT_HELLO];
    // The magic first, so that a stranger's few bytes are named as such at once.
    read_all(&mut stream, &mut theirs[..8], "greeting")?;
    if &theirs[..8] != MAGIC {
        return Err(format!(
            "not a Tributary cluster process (it sent {})",
            crate::source::lines::echo(&theirs[..8])
        ));
    }
    read_all(&mut stream, &mut theirs[8..], "greeting")?;
    let (peer, their_n) = (u64_at(&theirs, 8), u64_at(&theirs, 16));
    let their_nonce: [u8; 16] = theirs[24..40].try_into().expect("16 bytes");
    let answer = |stream: &mut TcpStream, status: u8| {
        let _ = stream.write_all(&[status]);
    };
    let peer_index = usize::try_from(peer).unwrap_or(usize::MAX);
    if !same(
        &theirs[40..],
        &proof(
            token,
            b"client",
            me,
            peer_index,
            their_n as usize,
            &nonce,
            &their_nonce,
        ),
    ) {
        answer(&mut stream, WRONG_TOKEN);
        return Err(format!(
            "it claims to be process {peer} but its proof does not match: another cluster \
             token (--cluster-token-file), or none"
        ));
    }
    if their_n != n as u64 || peer_index <= me || peer_index >= n {
        answer(&mut stream, WRONG_SHAPE);
        return Err(format!(
            "it is process {peer} of {their_n}, but this process {me} of {n} waits for \
             processes {}..{}",
            me + 1,
            n - 1
        ));
    }
    {
        let mut claimed = claimed.lock().unwrap_or_else(|p| p.into_inner());
        if claimed[peer_index] {
            drop(claimed);
            answer(&mut stream, DUPLICATE);
            return Err(format!("process {peer} is already connected"));
        }
        claimed[peer_index] = true;
    }
    let mut reply = vec![ACCEPTED];
    reply.extend_from_slice(&proof(
        token,
        b"server",
        me,
        peer_index,
        n,
        &nonce,
        &their_nonce,
    ));
    if let Err(e) = stream.write_all(&reply) {
        claimed.lock().unwrap_or_else(|p| p.into_inner())[peer_index] = false;
        return Err(format!("process {peer}: sending the answer: {e}"));
    }
    Ok((peer_index, stream))
}

/// The HMAC-SHA256 by which `role` (`client` or `server`) proves the token, over the
/// server's and client's indices, the cluster size and both nonces.
fn proof(
    token: &[u8],
    role: &[u8],
    server: usize,
    client: usize,
    n: usize,
    server_nonce: &[u8; 16],
    client_nonce: &[u8; 16],
) -> [u8; 32] {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(b"tributary cluster ");
    message.extend_from_slice(role);
    for v in [server, client, n] {
        message.extend_from_slice(&(v as u64).to_be_bytes());
    }
    message.extend_from_slice(server_nonce);
    message.extend_from_slice(client_nonce);
    hmac_sha256(token, &message)
}

/// Equality in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// 16 bytes from the operating system's random source.
fn random_nonce() -> Result<[u8; 16], String> {
    let mut nonce = [0u8; 16];
    let mut filled = 0;
    while filled < nonce.len() {
        // SAFETY: getrandom writes at most the given length into the given buffer.
        let n = unsafe {
            libc::getrandom(nonce[filled..].as_mut_ptr().cast(), nonce.len() - filled, 0)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("getrandom: {e}"));
            }
        } else {
            filled += n as usize;
        }
    }
    Ok(nonce)
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key` (the `hmac` and `sha2` crates).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// SHA-256 (FIPS 180-4) of `data` (the `sha2` crate).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_and_hmac_match_the_published_test_vectors() {
        // FIPS 180-4 examples.
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(
                b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
            )),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // RFC 4231, test cases 1, 2 and 6 (a key longer than a block).
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn proofs_depend_on_token_role_and_nonces() {
        let (s, c) = ([1u8; 16], [2u8; 16]);
        let p = proof(b"t", b"client", 0, 1, 2, &s, &c);
        assert!(same(&p, &proof(b"t", b"client", 0, 1, 2, &s, &c)));
        assert!(!same(&p, &proof(b"u", b"client", 0, 1, 2, &s, &c)));
        assert!(!same(&p, &proof(b"t", b"server", 0, 1, 2, &s, &c)));
        assert!(!same(&p, &proof(b"t", b"client", 0, 1, 2, &c, &s)));
        assert!(!same(&p, &proof(b"t", b"client", 0, 1, 3, &s, &c)));
        assert_ne!(random_nonce().unwrap(), random_nonce().unwrap());
    }
}
