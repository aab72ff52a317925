//! Headless Chromium driven over chromedriver (Debian's `chromium` and
//! `chromium-driver`), with the `fantoccini` WebDriver client, behind a
//! blocking interface like the other harnesses.
//!
//! Chromium runs with a fresh profile in a temporary directory, headless,
//! without a sandbox (tests run as root in CI), with its background
//! networking off (it reaches only the pages a test opens), and
//! `unhandledPromptBehavior: ignore`, so an alert a page opens stays open
//! for the test to see. Dropping the [`Browser`] ends the WebDriver session
//! (Chromium quits), then chromedriver, then any Chromium process still
//! running on this profile, by pid.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use super::procs::{listening, Proc};
use super::{free_port, wait_for, which};

/// The tools a browser test needs, for [`super::have_tools`].
pub const TOOLS: [&str; 2] = ["chromium", "chromedriver"];

/// How long one WebDriver command may take.
const COMMAND: Duration = Duration::from_secs(30);

pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Proc,
    profile: tempfile::TempDir,
}

/// The Chromium binary itself: Debian's `/usr/bin/chromium` is a shell
/// wrapper around it.
fn chromium_binary() -> PathBuf {
    let real = PathBuf::from("/usr/lib/chromium/chromium");
    if real.is_file() {
        real
    } else {
        which("chromium").unwrap_or_else(|| "chromium".into())
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium of
    /// `width` x `height` CSS pixels.
    pub fn start(width: u32, height: u32) -> Browser {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let port = free_port();
        let profile = tempfile::tempdir().expect("profile dir");
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).expect("log");
        let child = Command::new(which("chromedriver").unwrap_or_else(|| "chromedriver".into()))
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn chromedriver");
        let driver = Proc {
            child,
            name: "chromedriver",
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for(Duration::from_secs(20), || listening(addr).then_some(()))
            .expect("chromedriver did not start listening");
        let data_dir = profile.path().join("chromium");
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", data_dir.display()),
        ];
        let caps = json!({
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium_binary(),
                "args": args,
            },
        });
        let caps = match caps {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let url = format!("http://{addr}");
        let client = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(caps)
                    .connect(&url),
            )
            .await
        });
        let client = match client {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!(
                "no WebDriver session: {e}\n{}",
                std::fs::read_to_string(profile.path().join("chromedriver.log"))
                    .unwrap_or_default()
            ),
            Err(_) => panic!("no WebDriver session within 60 s"),
        };
        Browser {
            rt,
            client: Some(client),
            driver,
            profile,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    /// Runs one WebDriver command, bounded in time. The page redraws its
    /// tables every 2 s, so an element found just before a redraw may be
    /// gone when used: such a command (which did nothing) is tried again.
    fn run<'a, T, F>(&'a self, what: &str, f: impl Fn(&'a Client) -> F) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, fantoccini::error::CmdError>> + 'a,
    {
        // The client's futures need the runtime from their creation on.
        let _in = self.rt.enter();
        let mut tries = 0;
        loop {
            tries += 1;
            let command = f(self.client());
            let error = match self.rt.block_on(tokio::time::timeout(COMMAND, command)) {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => format!("{what}: {e}"),
                Err(_) => return Err(format!("{what}: no answer within {COMMAND:?}")),
            };
            if tries >= 3 || !error.contains("stale element") {
                return Err(error);
            }
        }
    }

    pub fn goto(&self, url: &str) {
        self.run("goto", |c| c.goto(url)).unwrap();
    }

    pub fn current_url(&self) -> String {
        self.run("current url", |c| c.current_url())
            .unwrap()
            .to_string()
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.run("execute", |c| c.execute(script, args.clone()))
    }

    /// The text of the first element `css` selects, if any.
    pub fn text(&self, css: &str) -> Option<String> {
        self.run("text", |c| async move {
            c.find(Locator::Css(css)).await?.text().await
        })
        .ok()
    }

    /// How many elements `css` selects.
    pub fn count(&self, css: &str) -> usize {
        self.run("find all", |c| c.find_all(Locator::Css(css)))
            .map_or(0, |v| v.len())
    }

    /// Clicks the first element `css` selects.
    pub fn click(&self, css: &str) -> Result<(), String> {
        self.run("click", |c| async move {
            c.find(Locator::Css(css)).await?.click().await
        })
    }

    /// Replaces the value of the first input `css` selects with `text`,
    /// as typed.
    pub fn fill(&self, css: &str, text: &str) -> Result<(), String> {
        self.run("fill", |c| async move {
            let input = c.find(Locator::Css(css)).await?;
            input.clear().await?;
            input.send_keys(text).await
        })
    }

    /// The text of the open alert, confirm or prompt; `None` if none is
    /// open.
    pub fn alert_text(&self) -> Option<String> {
        self.run("alert text", |c| c.get_alert_text()).ok()
    }

    pub fn accept_alert(&self) -> Result<(), String> {
        self.run("accept alert", |c| c.accept_alert())
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        self.run("screenshot", |c| c.screenshot()).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _in = self.rt.enter();
            let _ = self.rt.block_on(tokio::time::timeout(
                Duration::from_secs(10),
                client.close(),
            ));
        }
        let _ = self.driver.child.kill();
        let _ = self.driver.child.wait();
        // A Chromium that outlived its driver: found by its profile
        // directory, which only this browser used, and ended by pid.
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        for pid in pids_with_arg_prefix(&marker) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// The pids of processes one of whose arguments starts with `prefix`.
fn pids_with_arg_prefix(prefix: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
}
