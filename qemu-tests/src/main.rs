//! The VM test runner and benchmark.
//!
//! ```text
//! xorbang-qemu-tests [--list] [SCENARIO…]   run scenarios (all when none is named)
//! xorbang-qemu-tests bench [PART…]          measure (boot, layers, host-config, dev, formats,
//!                                           readahead, delta, firmware, netboot, custom-kernel,
//!                                           build, verity-format; all when none)
//! xorbang-qemu-tests demo [--dev]           boot the demo image with the console attached
//! xorbang-qemu-tests rig --tree DIR --dnsmasq-conf FILE [--taps N] [--run-dir DIR]
//!                                           bring up a netboot network namespace (bridge,
//!                                           taps, dnsmasq, HTTP) until Ctrl-C, to rerun a
//!                                           netboot scenario's QEMU command by hand
//! xorbang-qemu-tests serve --root DIR --listen ADDR:PORT --log FILE
//!                                           (internal: the rig's HTTP server) serve the
//!                                           files below DIR, print `listening on ADDR:PORT`,
//!                                           log `<client ip> <status> <bytes> <path>` per answer
//! ```
//!
//! Prints `PASS name (secs)`, `FAIL name: reason` or `SKIP name: reason` (it cannot run on
//! this host) per scenario and ends with the plain line `N passed, N failed, N skipped`. Configuration comes from the environment: see `harness/config.rs`.

mod bench;
mod context;
mod fixtures;
mod harness;
mod scenarios;

use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use context::Context;
use fixtures::os_build;
use harness::qemu;
use scenarios::{Scenario, SCENARIOS};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

enum Action {
    List,
    Run(Vec<&'static Scenario>),
    Bench(Vec<String>),
    Demo {
        mode: Option<&'static str>,
    },
    Rig(harness::netns::NetSpec),
    Serve {
        root: PathBuf,
        listen: SocketAddr,
        log: PathBuf,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let action = match parse_args(&args) {
        Ok(action) => action,
        Err(error) => {
            eprintln!("xorbang-qemu-tests: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match action {
        Action::List => {
            for scenario in SCENARIOS {
                println!("{:<14} {}", scenario.name, scenario.about);
            }
            Ok(())
        }
        Action::Demo { mode } => demo(mode),
        Action::Rig(spec) => harness::netns::hold(&spec),
        Action::Serve { root, listen, log } => {
            harness::http_server::serve_until_killed(listen, &root, &log)
        }
        Action::Run(chosen) => match Context::prepare(chosen.iter().any(|scenario| {
            scenario.boots_custom_kernel() && scenario.missing_requirement().is_none()
        })) {
            Ok(context) => return run_scenarios(&context, chosen),
            Err(error) => {
                let mut tally = Tally::default();
                let reason = format!("preparing fixtures failed: {error}");
                println!("{}", tally.add("prepare", &Outcome::Failed(reason)));
                println!("{tally}");
                return ExitCode::FAILURE;
            }
        },
        Action::Bench(parts) => {
            Context::prepare(false).and_then(|context| bench::bench(&context, &parts))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xorbang-qemu-tests: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(args: &[String]) -> Result<Action, String> {
    match args.first().map(String::as_str) {
        Some("--list") => Ok(Action::List),
        Some("bench") => {
            let parts = args[1..].to_vec();
            match parts.iter().find(|part| !bench::is_part(part)) {
                Some(unknown) => Err(format!("no bench part {unknown}")),
                None => Ok(Action::Bench(parts)),
            }
        }
        Some("demo") => match args.get(1).map(String::as_str) {
            None => Ok(Action::Demo { mode: None }),
            Some("--dev") => Ok(Action::Demo { mode: Some("1") }),
            Some("--persist") => Ok(Action::Demo {
                mode: Some("persist"),
            }),
            Some(other) => Err(format!("demo takes --dev or --persist, not {other}")),
        },
        Some("rig") => {
            let mut options = options(&args[1..], &["--tree", "--dnsmasq-conf"])?;
            let conf = PathBuf::from(options.remove("--dnsmasq-conf").unwrap_or_default());
            let dnsmasq_conf = std::fs::read_to_string(&conf)
                .map_err(|error| format!("{}: {error}", conf.display()))?;
            let tree = PathBuf::from(options.remove("--tree").unwrap_or_default());
            let run_dir = options.remove("--run-dir").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qemu-tests/rig"),
                PathBuf::from,
            );
            let mut spec = harness::netns::NetSpec::new("rig", &tree, &run_dir, dnsmasq_conf)
                .map_err(|error| format!("cannot find this program: {error}"))?;
            if let Some(taps) = options.remove("--taps") {
                spec.taps = taps
                    .parse()
                    .map_err(|_| format!("--taps {taps}: expected a number"))?;
            }
            match options.into_keys().next() {
                Some(unknown) => Err(format!("rig takes no {unknown}")),
                None => Ok(Action::Rig(spec)),
            }
        }
        Some("serve") => {
            let mut options = options(&args[1..], &["--root", "--listen", "--log"])?;
            let listen = options.remove("--listen").unwrap_or_default();
            let action = Action::Serve {
                root: options.remove("--root").unwrap_or_default().into(),
                listen: listen
                    .parse()
                    .map_err(|_| format!("--listen {listen}: expected ADDR:PORT"))?,
                log: options.remove("--log").unwrap_or_default().into(),
            };
            match options.into_keys().next() {
                Some(unknown) => Err(format!("serve takes no {unknown}")),
                None => Ok(action),
            }
        }
        None => Ok(Action::Run(SCENARIOS.iter().collect())),
        Some(_) => args
            .iter()
            .map(|name| {
                scenarios::find(name).ok_or_else(|| format!("no scenario {name} (see --list)"))
            })
            .collect::<Result<_, _>>()
            .map(Action::Run),
    }
}

/// `--name value` pairs, each at most once; every name in `required` must be there.
fn options<'a>(
    args: &'a [String],
    required: &[&str],
) -> Result<std::collections::BTreeMap<&'a str, &'a str>, String> {
    let mut options = std::collections::BTreeMap::new();
    let mut words = args.iter();
    while let Some(name) = words.next() {
        if !name.starts_with("--") {
            return Err(format!("expected an option, not {name}"));
        }
        let value = words
            .next()
            .ok_or_else(|| format!("{name} needs a value"))?;
        if options.insert(name.as_str(), value.as_str()).is_some() {
            return Err(format!("{name} is given twice"));
        }
    }
    match required.iter().find(|name| !options.contains_key(*name)) {
        Some(missing) => Err(format!("{missing} is required")),
        None => Ok(options),
    }
}

/// Runs the scenarios on `jobs` worker threads (each runs one VM at a time) and prints one
/// line per scenario as it finishes.
fn run_scenarios(context: &Context, chosen: Vec<&'static Scenario>) -> ExitCode {
    let queue = Arc::new(Mutex::new(chosen.into_iter()));
    let (sender, results) = mpsc::channel();
    let workers: Vec<_> = (0..context.config.jobs)
        .map(|_| {
            let queue = Arc::clone(&queue);
            let sender = sender.clone();
            let context = context.clone();
            std::thread::spawn(move || loop {
                let next = match queue.lock() {
                    Ok(mut queue) => queue.next(),
                    Err(_) => None,
                };
                let Some(scenario) = next else { break };
                if sender
                    .send((scenario.name, run_one(&context, scenario)))
                    .is_err()
                {
                    break;
                }
            })
        })
        .collect();
    drop(sender);
    let mut tally = Tally::default();
    for (name, outcome) in results {
        println!("{}", tally.add(name, &outcome));
    }
    for worker in workers {
        if worker.join().is_err() {
            println!(
                "{}",
                tally.add(
                    "runner",
                    &Outcome::Failed("a worker thread panicked".into())
                )
            );
        }
    }
    println!("{tally}");
    if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

enum Outcome {
    Passed(Duration),
    Failed(String),
    /// The scenario could not run on this host: counted on its own, never as a pass.
    Skipped(String),
}

fn run_one(context: &Context, scenario: &Scenario) -> Outcome {
    if let Some(path) = scenario.missing_requirement() {
        return Outcome::Skipped(format!("needs {path}, which this host lacks"));
    }
    let started = Instant::now();
    match (scenario.run)(context) {
        Ok(()) => Outcome::Passed(started.elapsed()),
        Err(reason) => Outcome::Failed(reason),
    }
}

/// The counts behind the last line: `N passed, N failed, N skipped`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl Tally {
    /// Counts `outcome` and returns its line.
    fn add(&mut self, name: &str, outcome: &Outcome) -> String {
        match outcome {
            Outcome::Passed(elapsed) => {
                self.passed += 1;
                format!("PASS {name} ({:.1}s)", elapsed.as_secs_f64())
            }
            Outcome::Failed(reason) => {
                self.failed += 1;
                format!("FAIL {name}: {reason}")
            }
            Outcome::Skipped(reason) => {
                self.skipped += 1;
                format!("SKIP {name}: {reason}")
            }
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Builds `profiles/demo.toml` with `xorbang-build os` and boots it with the console on this
/// terminal (Ctrl-A X quits): the kernel and initramfs straight from QEMU, so `--dev` can add
/// `xorbang.dev=1` and `--persist` `xorbang.dev=persist` (the UKI's command line is sealed).
/// With `--persist` the disk is written, so changes survive QEMU too, until the next build.
fn demo(dev_mode: Option<&str>) -> Result<(), String> {
    let cache = harness::config::cache_dir()?;
    let binaries = fixtures::binaries::build_binaries().map_err(|error| error.to_string())?;
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/demo");
    let built = os_build::build_os(&binaries, &cache, &os_build::profile("demo"), &out)
        .map_err(|error| error.to_string())?;
    let kernel = built.file("vmlinuz");
    let qemu = harness::config::Config::qemu_from_env();
    let accel = match harness::config::requested_accel()? {
        Some(accel) => accel,
        None if qemu::kvm_works(&qemu, &kernel) => harness::config::Accel::Kvm,
        None => harness::config::Accel::Tcg,
    };
    let config = harness::config::Config::from_env(accel)?;
    let mut append = format!("console=ttyS0 roothash={}", built.root_hash);
    if let Some(mode) = dev_mode {
        append.push_str(&format!(" xorbang.dev={mode}"));
    }
    let vm = qemu::Vm {
        boot: qemu::Boot::Direct {
            kernel,
            initrd: built.file("initrd.img"),
            append,
        },
        disks: vec![built.file("disk.img")],
        fw_cfg: Vec::new(),
        network: qemu::Network::Isolated,
        memory_mib: 512,
        timeout: Duration::ZERO,
        after_markers: qemu::AfterMarkers::PowerOff,
        writable_disks: dev_mode == Some("persist"),
    };
    let mut command = vm.command(&config, true);
    eprintln!("demo: {}", qemu::shell_quoted(&command));
    let status = command
        .status()
        .map_err(|error| format!("cannot start QEMU: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("QEMU exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_counted_and_printed_apart_from_passes() {
        let mut tally = Tally::default();
        let lines = [
            tally.add("a", &Outcome::Passed(Duration::from_millis(1500))),
            tally.add(
                "b",
                &Outcome::Skipped("needs /x, which this host lacks".into()),
            ),
            tally.add("c", &Outcome::Failed("timed out".into())),
        ];
        assert_eq!(
            lines,
            [
                "PASS a (1.5s)",
                "SKIP b: needs /x, which this host lacks",
                "FAIL c: timed out"
            ]
        );
        assert_eq!(tally.to_string(), "1 passed, 1 failed, 1 skipped");
    }

    #[test]
    fn the_missing_host_file_is_named() {
        let scenario = Scenario {
            name: "needs-nothing-here",
            about: "",
            requires: &["/nonexistent/xorbang-requirement"],
            run: |_| panic!("a skipped scenario must not run"),
        };
        assert_eq!(
            scenario.missing_requirement(),
            Some("/nonexistent/xorbang-requirement")
        );
    }
}
