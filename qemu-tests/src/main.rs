//! The VM test runner and benchmark.
//!
//! ```text
//! xorbang-qemu-tests [--list] [SCENARIO…]   run scenarios (all when none is named)
//! xorbang-qemu-tests bench                  boot the production image and measure
//! xorbang-qemu-tests demo [--dev]           boot the demo image with the console attached
//! ```
//!
//! Prints `PASS name (secs)` or `FAIL name: reason` per scenario and ends with the plain
//! line `N passed, N failed`. Configuration comes from the environment: see `harness/config.rs`.

mod bench;
mod context;
mod fixtures;
mod harness;
mod scenarios;

use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use context::Context;
use harness::qemu;
use scenarios::{Scenario, SCENARIOS};

enum Action {
    List,
    Run(Vec<&'static Scenario>),
    Bench,
    Demo { dev: bool },
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
    if let Action::List = action {
        for scenario in SCENARIOS {
            println!("{:<14} {}", scenario.name, scenario.about);
        }
        return ExitCode::SUCCESS;
    }
    let context = match Context::prepare() {
        Ok(context) => context,
        Err(error) => {
            eprintln!("xorbang-qemu-tests: preparing fixtures failed: {error}");
            println!("0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let result = match action {
        Action::List => Ok(()),
        Action::Run(chosen) => return run_scenarios(&context, chosen),
        Action::Bench => bench::bench(&context),
        Action::Demo { dev } => demo(&context, dev),
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
        Some("bench") => Ok(Action::Bench),
        Some("demo") => Ok(Action::Demo {
            dev: args.iter().any(|arg| arg == "--dev"),
        }),
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
                let started = Instant::now();
                let outcome = (scenario.run)(&context);
                if sender
                    .send((scenario.name, outcome, started.elapsed()))
                    .is_err()
                {
                    break;
                }
            })
        })
        .collect();
    drop(sender);
    let (mut passed, mut failed) = (0, 0);
    for (name, outcome, elapsed) in results {
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("PASS {name} ({:.1}s)", elapsed.as_secs_f64());
            }
            Err(reason) => {
                failed += 1;
                println!("FAIL {name}: {reason}");
            }
        }
    }
    for worker in workers {
        if worker.join().is_err() {
            failed += 1;
            println!("FAIL runner: a worker thread panicked");
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Boots the systemd image with the console on this terminal (Ctrl-A X quits).
fn demo(context: &Context, dev: bool) -> Result<(), String> {
    let mut append = context.production_root();
    if dev {
        append.push_str(" xorbang.dev=1");
    }
    let vm = qemu::Vm {
        boot: qemu::Boot::Direct {
            kernel: context.kernel.vmlinuz.clone(),
            initrd: context.initrd.clone(),
            append: format!("console=ttyS0 {append}"),
        },
        disks: vec![context.system.disk.clone()],
        fw_cfg: Vec::new(),
        memory_mib: 512,
        timeout: std::time::Duration::ZERO,
        stop_at_markers: false,
    };
    let mut command = vm.command(&context.config, true);
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
