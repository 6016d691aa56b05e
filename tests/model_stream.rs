//! `GET /models/stream` (server-sent events): every final model as it is emitted; a
//! client that disconnects and reconnects with `Last-Event-ID` receives every final model
//! exactly once across the gap (compared with `--out`). On 127.0.0.1, bounded in time.

mod common;

use common::http::*;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const WIN: Win = Win::Tumbling(10_000);

/// One event: its id and the model's JSON.
type Events = Arc<Mutex<Vec<(String, Value)>>>;

/// A stream client: a thread reading events into `events` until `stop`.
struct Client {
    socket: TcpStream,
    events: Events,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn connect(addr: &str, last_event_id: Option<&str>) -> Client {
        let mut socket = TcpStream::connect(addr).unwrap();
        // HTTP/1.0: the body is the rest of the connection, no chunked framing.
        let mut request = format!("GET /models/stream HTTP/1.0\r\nHost: {addr}\r\n");
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        socket.write_all(request.as_bytes()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let events: Events = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, halt) = (events.clone(), stop.clone());
        let mut lines = BufReader::new(socket.try_clone().unwrap());
        let reader = std::thread::spawn(move || {
            let (mut id, mut line) = (String::new(), String::new());
            let deadline = Instant::now() + WAIT;
            while !halt.load(Ordering::SeqCst) && Instant::now() < deadline {
                match lines.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        let text = line.trim_end();
                        if let Some(v) = text.strip_prefix("id:") {
                            id = v.trim().to_owned();
                        } else if let Some(v) = text.strip_prefix("data:") {
                            let model: Value = serde_json::from_str(v.trim()).unwrap();
                            sink.lock().unwrap().push((id.clone(), model));
                        }
                        line.clear();
                    }
                    // A timeout keeps the partial line for the next read.
                    Err(_) => continue,
                }
            }
        });
        Client {
            socket,
            events,
            stop,
            reader: Some(reader),
        }
    }

    fn count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    fn close(mut self) -> Vec<(String, Value)> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.socket.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        self.events.lock().unwrap().clone()
    }
}

fn final_windows(out: &std::path::Path) -> BTreeSet<WinKey> {
    read_models(out).into_keys().collect()
}

fn window_of(model: &Value) -> WinKey {
    (
        model["key"].as_str().unwrap().to_owned(),
        model["window_start"].as_i64().unwrap(),
        model["window_end"].as_i64().unwrap(),
    )
}

#[test]
fn a_client_that_reconnects_with_last_event_id_gets_every_final_model_once() {
    let d = 2;
    let dir = TempDir::new("model_stream");
    let out = dir.path("out.jsonl");
    let server = Server::start(&dir, &http_args(&out, d, WIN, 1000, 2));
    let mut spec = GenSpec::new(1_200, 3, d, 31);
    spec.step = 50; // 60 s
    let rows = generate(&spec);
    let (first, second) = rows.split_at(500); // 25 s, then the rest
    let wait_for = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + WAIT;
        while !check() {
            assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let a = Client::connect(&server.addr, None);
    server.post_rows(first, d, false);
    let want_first = oracle(first, d, WIN, None)
        .into_keys()
        .filter(|k| k.2 <= first.last().unwrap().ts - 1000)
        .count();
    assert!(want_first >= 6);
    wait_for("the first finals streamed", &|| {
        a.count() >= want_first && final_windows(&out).len() >= want_first
    });
    let seen_a = a.close();
    let last_id = seen_a.last().unwrap().0.clone();

    // While no client is connected, more windows close.
    server.post_rows(second, d, false);
    let want_all = oracle(&rows, d, WIN, None)
        .into_keys()
        .filter(|k| k.2 <= rows.last().unwrap().ts - 1000)
        .count();
    wait_for("every final in --out", &|| {
        final_windows(&out).len() >= want_all
    });

    let b = Client::connect(&server.addr, Some(&last_id));
    wait_for("the missed finals streamed", &|| {
        seen_a.len() + b.count() >= want_all
    });
    // Nothing more comes (no duplicate arrives late).
    std::thread::sleep(Duration::from_millis(300));
    let seen_b = b.close();
    let streamed: Vec<WinKey> = seen_a
        .iter()
        .chain(&seen_b)
        .map(|(_, m)| window_of(m))
        .collect();
    let unique: BTreeSet<WinKey> = streamed.iter().cloned().collect();
    assert_eq!(unique.len(), streamed.len(), "a final model streamed twice");
    assert_eq!(
        unique,
        final_windows(&out),
        "the stream and --out hold the same finals"
    );
    assert!(
        seen_a
            .iter()
            .chain(&seen_b)
            .all(|(_, m)| m["final"] == true)
    );
    // Ids increase, and the reconnection started right after the last one seen.
    let seq = |id: &str| id.rsplit('-').next().unwrap().parse::<u64>().unwrap();
    let ids: Vec<u64> = seen_a
        .iter()
        .chain(&seen_b)
        .map(|(id, _)| seq(id))
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // An id of another run (a restarted server) starts from the oldest kept.
    let c = Client::connect(&server.addr, Some("1-1"));
    wait_for("everything kept", &|| c.count() >= want_all);
    assert_eq!(c.close().len(), want_all);
}
