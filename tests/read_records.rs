//! `read_records` on a live source: the ingest log fed by a TCP connection (client mode,
//! to a listener of the test on 127.0.0.1). The records arrive as written, the operator's
//! counters reach the run's `Metrics`, and an idle source does not spin its worker: the
//! worker parks until the source wakes it. Bounded in time; the connection and the log
//! are closed (which ends the dataflow) even when an assertion fails.

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::{Inspect, Probe};
use tributary::source::feed::{BATCH_WAIT, DEFAULT_MAX_LINE, FeedContext};
use tributary::source::tcp::{self, TcpLimits};
use tributary::source::{IngestLog, LogReader};
use tributary::{Fatal, OnError, ReadRecords, RunContext, Schema, SourceReader, SourceSpec};

/// Longest any step of a test may take.
const DEADLINE: Duration = Duration::from_secs(20);

/// How long the worker is watched while its source is idle.
const IDLE: Duration = Duration::from_secs(1);

/// CPU time the worker may use in [`IDLE`]: a spinning worker uses all of it.
const IDLE_CPU: Duration = Duration::from_millis(300);

/// Median latency of a line sent to an idle source (limit): woken, it is read a few ms after the
/// feed hands it on (the feed gathers a batch for `BATCH_WAIT`, the test polls every
/// 5 ms); found only by the operator's 100 ms timer, its latency spreads over another
/// 0..100 ms (a median near `BATCH_WAIT` + 50 ms).
const WOKEN: Duration = Duration::from_millis(BATCH_WAIT.as_millis() as u64 + 12);

fn fail(error: Fatal) -> ! {
    panic!("fatal: {error}")
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A record as written: (time, key, x, y).
type Line = (i64, String, Vec<f64>, f64);

/// A record as read: (epoch, time, key, x, y).
type Read = (u64, i64, String, Vec<f64>, f64);

/// A one-worker dataflow reading the log with `read_records`, on its own thread. On a
/// request it watches itself for a while, stepping as a run does (parking when there is
/// nothing to do), and answers the CPU time it used meanwhile.
struct Worker {
    records: Arc<Mutex<Vec<Read>>>,
    watch: Sender<Duration>,
    used: Receiver<Duration>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(log: &Arc<IngestLog>, context: RunContext) -> Worker {
        let records: Arc<Mutex<Vec<Read>>> = Arc::default();
        let (watch, watched) = channel::<Duration>();
        let (report, used) = channel();
        let reader = SourceReader::Log(LogReader::new(Arc::clone(log), 0, 1));
        let seen = Arc::clone(&records);
        // Moved into a closure that must be `Sync`.
        let watched = Mutex::new(watched);
        let thread = std::thread::spawn(move || {
            timely::execute_directly(move |worker| {
                let probe = ProbeHandle::new();
                worker.dataflow(|scope| {
                    let read = scope.read_records(reader, &context);
                    read.records
                        .inspect_core(move |event| {
                            if let Ok((stamp, batch)) = event {
                                let epoch = *stamp.least().expect("a time");
                                let mut seen = seen.lock().unwrap();
                                for r in batch {
                                    seen.push((epoch, r.time, r.key.clone(), r.x.clone(), r.y));
                                }
                            }
                        })
                        .probe_with(&probe)
                        .probe_with(&read.throttle);
                });
                let started = Instant::now();
                while !probe.done() && started.elapsed() < 3 * DEADLINE {
                    worker.step_or_park(Some(Duration::from_millis(50)));
                    let request = watched.lock().unwrap().try_recv();
                    if let Ok(span) = request {
                        let (cpu, from) = (thread_cpu(), Instant::now());
                        while from.elapsed() < span && !probe.done() {
                            worker.step_or_park(Some(Duration::from_millis(50)));
                        }
                        let _ = report.send(thread_cpu() - cpu);
                    }
                }
            });
        });
        Worker {
            records,
            watch,
            used,
            thread: Some(thread),
        }
    }

    /// Waits until `n` records have been read.
    fn wait_for(&self, n: usize) {
        let start = Instant::now();
        while self.records.lock().unwrap().len() < n {
            assert!(
                start.elapsed() < DEADLINE,
                "{} of {n} records read within {DEADLINE:?}",
                self.records.lock().unwrap().len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The worker's CPU time over `span`.
    fn cpu_over(&self, span: Duration) -> Duration {
        self.watch.send(span).unwrap();
        self.used
            .recv_timeout(span + DEADLINE)
            .expect("the worker answers")
    }

    /// Waits for the dataflow to end.
    fn join(mut self) {
        let thread = self.thread.take().unwrap();
        let start = Instant::now();
        while !thread.is_finished() {
            assert!(start.elapsed() < DEADLINE, "the dataflow did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        thread.join().expect("the worker ran to its end");
    }
}

/// The source's end: the test's side of the connection and the log, closed on drop so
/// that the worker's dataflow ends even when an assertion fails.
struct Source {
    log: Arc<IngestLog>,
    stream: Option<TcpStream>,
}

impl Source {
    /// A TCP source (client mode) connected to a listener of the test on 127.0.0.1, read
    /// into a fresh log under `context`'s policy and metrics.
    fn connect(context: &RunContext) -> Source {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let log = Arc::new(IngestLog::open(None, None, 1_000_000).unwrap());
        let SourceSpec::Tcp(spec) = format!("tcp:{address}").parse().unwrap() else {
            panic!("a tcp source");
        };
        let feed = FeedContext {
            schema: Schema::generated(2),
            log: Arc::clone(&log),
            metrics: Arc::clone(&context.metrics),
            on_error: context.on_error,
            on_fatal: context.on_fatal,
            max_line: DEFAULT_MAX_LINE,
        };
        // Connects before it returns: the connection is waiting to be accepted.
        tcp::start(&spec, TcpLimits::default(), feed).unwrap();
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(start.elapsed() < DEADLINE, "the source did not connect");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        Source {
            log,
            stream: Some(stream),
        }
    }

    fn send(&mut self, text: &str) {
        let stream = self.stream.as_mut().expect("open");
        stream.write_all(text.as_bytes()).unwrap();
        stream.flush().unwrap();
    }

    /// Closes the connection: the source reads what is left and closes the log.
    fn close(&mut self) {
        self.stream = None;
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.close();
        self.log.close();
    }
}

/// Lines `from .. to` of key `k{i mod 3}`, and what `read_records` makes of each.
fn lines(from: i64, to: i64) -> (String, Vec<Line>) {
    let mut text = String::new();
    let mut want = Vec::new();
    for i in from..to {
        let (key, x0, x1, y) = (format!("k{}", i % 3), i as f64 * 0.5, 1.25, i as f64 - 3.0);
        text.push_str(&format!("{},{key},{x0},{x1},{y}\n", 1_000 * i));
        want.push((1_000 * i, key, vec![x0, x1], y));
    }
    (text, want)
}

/// The records read, without their epochs.
fn records(worker: &Worker) -> Vec<Line> {
    let read = worker.records.lock().unwrap();
    read.iter()
        .map(|(_, t, k, x, y)| (*t, k.clone(), x.clone(), *y))
        .collect()
}

/// A live source with nothing to read parks its worker instead of spinning it, wakes it
/// when records come, and every record arrives as written, in order.
#[test]
fn read_records_on_an_idle_live_source_does_not_spin_and_wakes_for_records() {
    let context = RunContext::new(OnError::Fail, Arc::default(), fail);
    let mut source = Source::connect(&context);
    let worker = Worker::start(&source.log, context.clone());
    let (first, mut want) = lines(0, 500);
    source.send(&format!("ts,key,x0,x1,y\n{first}"));
    worker.wait_for(500);
    assert_eq!(records(&worker), want);

    // Nothing arrives: the worker parks (woken now and then by the operator's timer).
    let cpu = worker.cpu_over(IDLE);
    eprintln!("worker CPU over {IDLE:?} of an idle source: {cpu:?}");
    assert!(
        cpu < IDLE_CPU,
        "the worker used {cpu:?} of CPU in {IDLE:?} while its source was idle \
         (a spin uses about all of it; the limit is {IDLE_CPU:?})"
    );

    // Records after an idle spell wake it: each of 11 lines, sent after a pause of 0 to
    // 100 ms, is read as soon as the feed hands it on, not at the operator's next look.
    let mut latencies = Vec::new();
    let mut pause = 17u64;
    for i in 500..511 {
        pause = (pause * 37 + 11) % 101;
        std::thread::sleep(Duration::from_millis(pause));
        let (line, also) = lines(i, i + 1);
        let sent = Instant::now();
        source.send(&line);
        worker.wait_for(i as usize + 1);
        latencies.push(sent.elapsed());
        want.extend(also);
    }
    latencies.sort();
    eprintln!("latency of a line after an idle spell: {latencies:?}");
    assert!(
        latencies[5] < WOKEN,
        "median latency {:?} of a line after an idle spell (limit {WOKEN:?}): {latencies:?}",
        latencies[5]
    );
    let (more, also) = lines(511, 800);
    source.send(&more);
    worker.wait_for(800);
    want.extend(also);
    assert_eq!(records(&worker), want);

    // The connection closes: the source ends, and with it the dataflow.
    source.close();
    let read = records(&worker);
    worker.join();
    assert_eq!(read, want);
    assert_eq!(context.metrics.snapshot().records, 800);
}

/// The operator's counters: records read are counted in the run's `Metrics` as they are
/// read (before the source ends), malformed lines (counted where the live source parses
/// them) in the same `Metrics`; epochs are the log's batch numbers, in order.
#[test]
fn read_records_counts_a_live_sources_records_as_they_are_read() {
    let context = RunContext::new(OnError::Skip, Arc::default(), fail);
    let mut source = Source::connect(&context);
    let worker = Worker::start(&source.log, context.clone());
    let (good, want) = lines(0, 200);
    source.send(&format!(
        "ts,key,x0,x1,y\n{good}not-a-time,k,1,2,3\n7,k,1\n"
    ));
    worker.wait_for(200);
    let start = Instant::now();
    while context.metrics.snapshot().malformed < 2 {
        assert!(start.elapsed() < DEADLINE, "malformed lines not counted");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The source is still open: what was read is counted already.
    let counted = context.metrics.snapshot();
    assert_eq!((counted.records, counted.malformed), (200, 2));
    assert_eq!(records(&worker), want);
    let epochs: Vec<u64> = worker.records.lock().unwrap().iter().map(|r| r.0).collect();
    assert!(epochs.is_sorted(), "epochs in order: {epochs:?}");

    source.close();
    worker.join();
    let counted = context.metrics.snapshot();
    assert_eq!((counted.records, counted.malformed), (200, 2));
}
