//! Running the external programs the build leans on (mksquashfs, sbsign and sbverify,
//! mkfs.vfat and mtools): one place that turns their failures into errors carrying their
//! output and the Debian package to install.

use std::io::{self, BufRead};
use std::process::{Command, ExitStatus, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{program} not found; install {package}")]
    Missing {
        program: String,
        package: &'static str,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}): {output}")]
    Failed {
        program: String,
        status: ExitStatus,
        output: String,
    },
}

/// Runs `command` (from `package`) to completion with no input; on failure the error holds
/// what it printed, stderr and stdout both (mksquashfs reports some errors on stdout).
pub fn run(command: &mut Command, package: &'static str) -> Result<(), ToolError> {
    let program = command.get_program().to_string_lossy().into_owned();
    // A tool that asks a question (sbsign for a key's password) must not wait for an answer.
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| spawn_error(&program, package, source))?;
    if output.status.success() {
        return Ok(());
    }
    let text = [output.stderr, output.stdout]
        .iter()
        .map(|bytes| String::from_utf8_lossy(bytes).trim().to_owned())
        .filter(|text| !text.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Err(ToolError::Failed {
        program,
        status: output.status,
        output: text,
    })
}

/// Runs a long `command` (mmdebstrap, apt-get) with its output on the terminal, so the user
/// sees that it is alive. Its stderr passes through here: on failure the error quotes the
/// `E: ` lines apt and mmdebstrap print, which say what went wrong.
pub fn run_showing_output(command: &mut Command, package: &'static str) -> Result<(), ToolError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(&program, package, source))?;
    let mut errors = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in io::BufReader::new(stderr).lines() {
            let line = line.map_err(|source| ToolError::Spawn {
                program: program.clone(),
                source,
            })?;
            eprintln!("{line}");
            if line.starts_with("E: ") {
                errors.push(line);
            }
        }
    }
    let status = child.wait().map_err(|source| ToolError::Spawn {
        program: program.clone(),
        source,
    })?;
    match status.success() {
        true => Ok(()),
        false => Err(ToolError::Failed {
            program,
            status,
            output: match errors.is_empty() {
                true => "its output is above".to_owned(),
                false => errors.join("\n"),
            },
        }),
    }
}

fn spawn_error(program: &str, package: &'static str, source: io::Error) -> ToolError {
    match source.kind() {
        io::ErrorKind::NotFound => ToolError::Missing {
            program: program.to_owned(),
            package,
        },
        _ => ToolError::Spawn {
            program: program.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_carry_the_output_and_missing_tools_the_package() {
        let error = run(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            "dash",
        )
        .expect_err("exit 3");
        assert!(
            matches!(&error, ToolError::Failed { output, .. } if output == "err\nout"),
            "{error}"
        );
        let error =
            run(&mut Command::new("/nonexistent/tool"), "some-package").expect_err("missing");
        assert_eq!(
            error.to_string(),
            "/nonexistent/tool not found; install some-package"
        );
        run(&mut Command::new("true"), "coreutils").expect("succeeds");
    }
}
