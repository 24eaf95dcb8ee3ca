//! `coalmine report`: the demo's decision logs rendered and opened in real headless
//! Chromium (no console message, no network request, the plots drawn), Markdown, and bad
//! input refused with `file:line`, exit 2.
//!
//! `COALMINE_SCREENSHOTS=DIR` also writes each scenario's screenshot to `DIR/report-NAME.png`
//! (how docs/report-*.png are made).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use crate::common::{Guard, require_tool};
use crate::support::{run, text};

/// The decision log of one run of the demo's `scenario`, shared by every test of this file
/// and of the backtest's (each scenario runs once per test binary).
pub(crate) fn demo_log(scenario: &str) -> PathBuf {
    static DIR: LazyLock<tempfile::TempDir> =
        LazyLock::new(|| tempfile::tempdir().expect("a temporary directory"));
    static LOGS: [OnceLock<PathBuf>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = ["healthy", "errors", "latency"]
        .iter()
        .position(|s| *s == scenario)
        .expect("a demo scenario");
    LOGS[i]
        .get_or_init(|| {
            let log = DIR.path().join(format!("{scenario}.jsonl"));
            let out = run(&[
                "demo",
                "--scenario",
                scenario,
                "--quiet",
                "--decisions",
                log.to_str().unwrap(),
            ]);
            let want = i32::from(scenario != "healthy");
            assert_eq!(out.status.code(), Some(want), "{:?}", text(&out));
            log
        })
        .clone()
}

/// A proxy that accepts connections and remembers each request's first line (answering
/// nothing): every request Chromium makes goes through it, file:// pages excepted.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    fn start() -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut first = String::new();
                        let _ = BufReader::new(c).read_line(&mut first);
                        s.lock().unwrap().push(first.trim_end().to_string());
                    }
                    Err(_) => {
                        // No async runtime here: a short wait between polls.
                        #[expect(
                            clippy::disallowed_methods,
                            reason = "a plain thread polling a listener, not async code"
                        )]
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        Recorder {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// Requests seen, without Chromium's own background requests to its vendor's services
    /// (time, component updates, accounts), which it makes whatever page is open and which
    /// no flag turns off in this build. Anything a page loads (fonts, images, scripts,
    /// fonts.googleapis.com included) is still counted.
    fn page_requests(&self) -> Vec<String> {
        const BROWSER_OWN: [&str; 3] = [
            "clients2.google.com",
            "update.googleapis.com",
            "accounts.google.com",
        ];
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                !BROWSER_OWN
                    .iter()
                    .any(|h| l.contains(&format!("{h}/")) || l.contains(&format!("{h}:")))
            })
            .cloned()
            .collect()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one headless Chromium run of a page gave.
struct Opened {
    /// The DOM after rendering (`--dump-dom`).
    dom: String,
    /// Console messages Chromium logged for the page.
    console: Vec<String>,
    /// Requests the page made.
    requests: Vec<String>,
    /// The screenshot's pixels (RGB or RGBA: `channels`), width and height.
    pixels: Vec<u8>,
    channels: usize,
    width: usize,
    height: usize,
    png: Vec<u8>,
}

/// Runs headless Chromium on `page` (`args` after the common flags), at most 90 s.
fn chromium(chrome: &Path, profile: &Path, proxy: u16, args: &[&str]) -> (String, String) {
    let mut cmd = Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--disable-default-apps",
        // Chromium 148 connects to www.google.com at startup whatever the page: the AI-mode
        // eligibility check and the search engine's preconnect. Off, so that any request
        // to it is the page's.
        "--disable-features=AimEnabled,PreconnectToSearch",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        &format!("--user-data-dir={}", profile.display()),
        // Every request, loopback included, goes to the recorder (which answers nothing).
        &format!("--proxy-server=http://127.0.0.1:{proxy}"),
        "--proxy-bypass-list=<-loopback>",
    ])
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut g = Guard::spawn(&mut cmd);
    let stdout = g.0.stdout.take().unwrap();
    let stderr = g.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    for _ in 0..900 {
        if !matches!(g.0.try_wait(), Ok(None)) {
            break;
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "waiting for a child process, not async code"
        )]
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !matches!(g.0.try_wait(), Ok(None)),
        "chromium did not finish within 90 s: {args:?}"
    );
    (out.join().unwrap(), err.join().unwrap())
}

fn open(page: &Path, dir: &Path) -> Opened {
    let chrome = require_tool("chromium", "chromium").expect("chromium (CI=true fails above)");
    let url = format!("file://{}", page.display());
    let recorder = Recorder::start();
    let (dom, log) = chromium(
        &chrome,
        &dir.join("profile-dom"),
        recorder.port,
        &["--dump-dom", &url],
    );
    let shot = dir.join("shot.png");
    let (_, log2) = chromium(
        &chrome,
        &dir.join("profile-shot"),
        recorder.port,
        &[
            "--window-size=1280,2200",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    let console = log
        .lines()
        .chain(log2.lines())
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot ({e}):\n{log2}"));
    let mut reader = png::Decoder::new(std::io::Cursor::new(png.clone()))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("screenshot in {other:?}"),
    };
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{info:?}");
    pixels.truncate(info.buffer_size());
    Opened {
        dom,
        console,
        requests: recorder.page_requests(),
        pixels,
        channels,
        width: info.width as usize,
        height: info.height as usize,
        png,
    }
}

/// Pixels within a small distance of `rgb`.
fn pixels_of(o: &Opened, rgb: [u8; 3]) -> usize {
    o.pixels
        .chunks_exact(o.channels)
        .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 24))
        .count()
}

/// The value of attribute `name` in the tag starting at `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = tag[..tag.find('>')?].find(&key)? + key.len();
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// Each rendered plot: its title, its bands and, per series, (name, points, what is drawn:
/// line segments or dots, whichever is more).
/// A rendered plot: title, bands, series.
type Rendered = (String, usize, Vec<(String, usize, usize)>);

fn plots(dom: &str) -> Vec<Rendered> {
    dom.split("<svg class=\"plot\"")
        .skip(1)
        .map(|svg| {
            let svg = &svg[..svg.find("</svg>").unwrap()];
            let title = svg
                .split_once("<title>")
                .and_then(|(_, t)| t.split_once("</title>"))
                .map(|(t, _)| t.replace("&lt;", "<").replace("&gt;", ">"))
                .unwrap_or_default();
            let bands = svg.matches("<polygon class=\"band").count();
            let series = svg
                .split("<path class=\"series")
                .skip(1)
                .map(|p| {
                    let name = attr(p, "data-name").unwrap_or("").to_string();
                    let points = attr(p, "data-points")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let d = attr(p, "d").unwrap_or("");
                    let segments = d.matches('L').count();
                    // Dots follow their path until the next path.
                    let dots = p
                        .split("<path")
                        .next()
                        .unwrap_or("")
                        .matches("<circle class=\"dot")
                        .count();
                    (name, points, segments.max(dots))
                })
                .collect();
            (title, bands, series)
        })
        .collect()
}

const BASELINE: [u8; 3] = [0x1f, 0x5f, 0xbf];
const CANARY: [u8; 3] = [0xe0, 0x40, 0x1a];

/// The detectors work: a page that loads an image and logs an error is seen doing both.
#[test]
fn chromium_check_sees_a_page_that_fetches_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("control.html");
    std::fs::write(
        &page,
        r#"<!DOCTYPE html><html><body><img src="http://example.invalid/x.png"><script>console.error("control")</script></body></html>"#,
    )
    .unwrap();
    let o = open(&page, dir.path());
    assert!(
        o.requests.iter().any(|r| r.contains("example.invalid")),
        "{:?}",
        o.requests
    );
    assert!(
        o.console.iter().any(|l| l.contains("control")),
        "{:?}",
        o.console
    );
    assert_eq!(pixels_of(&o, BASELINE), 0);
}

fn report_opens_in_chromium(scenario: &str) {
    let dir = tempfile::tempdir().unwrap();
    let log = demo_log(scenario);
    let page = dir.path().join("report.html");
    let out = run(&[
        "report",
        log.to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ticks = records.iter().filter(|r| r["kind"] == "tick").count();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("default-src 'none'"),
        "a CSP forbids every fetch"
    );
    assert!(!html.contains("<script"), "no scripts");

    let o = open(&page, dir.path());
    if let Some(d) = std::env::var_os("COALMINE_SCREENSHOTS") {
        std::fs::write(Path::new(&d).join(format!("report-{scenario}.png")), &o.png).unwrap();
    }
    assert!(o.console.is_empty(), "console messages: {:?}", o.console);
    assert!(o.requests.is_empty(), "network requests: {:?}", o.requests);
    let outcome = if scenario == "healthy" {
        "promoted"
    } else {
        "rolled back"
    };
    assert!(
        o.dom.contains(&format!(
            r#"badge {}">{outcome}</span>"#,
            outcome.replace(' ', "-")
        )),
        "outcome {outcome} shown"
    );

    // The plots, as Chromium parsed them: the demo policy's metrics and the traffic.
    let plots = plots(&o.dom);
    let titles: Vec<&str> = plots.iter().map(|p| p.0.as_str()).collect();
    for want in [
        "canary weight",
        "requests per window",
        "error-rate: error rate per arm",
        "error-rate: rate ratio canary / baseline",
        "error-rate: evidence",
        "latency: p50 per arm, time-uniform bounds",
        "latency: p99 per arm, time-uniform bounds",
        "latency: evidence",
        "error-ceiling: canary rate against its bounds",
    ] {
        assert!(titles.contains(&want), "plot `{want}` in {titles:?}");
    }
    let footer = o.dom.split("data-plots=\"").nth(1).unwrap();
    assert_eq!(footer[..footer.find('"').unwrap()], plots.len().to_string());
    for (title, bands, series) in &plots {
        let expect: (usize, usize) = match title.as_str() {
            "canary weight" => (1, 0),
            "requests per window" => (2, 0),
            "error-rate: error rate per arm" => (4, 0),
            "error-rate: rate ratio canary / baseline" => (1, 1),
            t if t.ends_with("evidence") => (1, 0),
            t if t.starts_with("latency: p") => (2, 2),
            _ => (1, 0),
        };
        assert_eq!((series.len(), *bands), expect, "{title}: {series:?}");
        for (name, points, drawn) in series {
            assert!(
                *drawn >= 1 && (*points < 2 || *drawn + 1 >= (*points).min(3)),
                "{title}: series {name} of {points} points is drawn ({drawn})"
            );
            assert!(*points <= ticks.max(records.len()), "{title}: {name}");
        }
        if title.ends_with("evidence") {
            // One point per tick: the whole rollout is on the plot.
            assert_eq!(series[0].1, ticks, "{title}");
        }
    }
    // The screenshot has both arms' lines in their colours.
    assert!(
        o.width >= 1000 && o.height >= 1000,
        "{}x{}",
        o.width,
        o.height
    );
    for (arm, rgb) in [("baseline", BASELINE), ("canary", CANARY)] {
        let n = pixels_of(&o, rgb);
        assert!(n > 500, "{arm}: {n} pixels of its colour in the screenshot");
    }
}

#[test]
fn healthy_report_renders_in_chromium_without_network() {
    report_opens_in_chromium("healthy");
}

#[test]
fn errors_report_renders_in_chromium_without_network() {
    report_opens_in_chromium("errors");
}

#[test]
fn latency_report_renders_in_chromium_without_network() {
    report_opens_in_chromium("latency");
}

#[test]
fn markdown_summary_names_outcome_metrics_and_decisions() {
    let log = demo_log("errors");
    let out = run(&["report", log.to_str().unwrap(), "--format", "md"]);
    let (md, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(md.starts_with("## coalmine rollout `demo ("), "{md}");
    assert!(md.contains(": rolled back (exit 1)"), "{md}");
    assert!(
        md.contains("**Reason:** metric `error-rate` failed"),
        "{md}"
    );
    assert!(
        md.contains("| error-rate | sequential | **fail** |"),
        "{md}"
    );
    assert!(md.contains("| rollback |"), "{md}");
}

#[test]
fn bad_logs_exit_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(demo_log("errors")).unwrap();
    let lines: Vec<&str> = good.lines().collect();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    // A torn line in the middle (a truncated copy), not JSON at all, JSON but no record.
    let mut torn = lines.clone();
    let cut = &lines[3][..lines[3].len() / 2];
    torn[3] = cut;
    let cases = [
        (write("torn.jsonl", torn.join("\n")), ":4: not a JSON line"),
        (
            write("policy.toml", "name = \"x\"\n[rollout]\n".to_string()),
            ":1: not a JSON line",
        ),
        (
            write(
                "log.jsonl",
                format!("{}\n{{\"level\":\"info\",\"msg\":\"hi\"}}\n", lines[0]),
            ),
            ":2: not a decision record: no `kind` field",
        ),
        (write("empty.jsonl", String::new()), ": no decision records"),
    ];
    for (path, want) in cases {
        let out = run(&["report", &path]);
        let (stdout, err) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{path}: {err}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(err.contains(&format!("{path}{want}")), "{path}: {err}");
    }
    // Two rollouts (another id) in one file: choose one.
    let other = good.replace("\"rollout_id\":\"", "\"rollout_id\":\"other-");
    let both = write("both.jsonl", format!("{good}{other}"));
    let out = run(&["report", &both]);
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("2 rollouts in one file") && err.contains("--rollout"),
        "{err}"
    );
    assert!(err.contains(&format!("{both}:1")), "{err}");
    let id = records_id(&other);
    let out = run(&["report", &both, "--rollout", &id, "--format", "md"]);
    let (md, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(md.contains(&id), "{md}");
    let out = run(&["report", &both, "--rollout", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("no rollout `nope`"),
        "{:?}",
        text(&out)
    );
}

fn records_id(log: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    v["rollout_id"].as_str().unwrap().to_string()
}
