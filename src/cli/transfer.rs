//! `podckpt export`, `podckpt import` and `podckpt keygen`: a checkpoint
//! carried to another node as one stream.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::{CliError, Format, progress};
use crate::archive::space::human;
use crate::archive::stream::{self, ExportOptions, Identities, ImportOptions};
use crate::archive::{Seals, create_private, durable};

/// `-` is standard input or output.
const STDIO: &str = "-";

pub(super) fn export(
    format: Format,
    dir: &Path,
    output: Option<&Path>,
    recipients: &[String],
    level: i32,
) -> Result<(), CliError> {
    let mut options = ExportOptions {
        level,
        ..ExportOptions::default()
    };
    for recipient in recipients {
        options.recipients.add(recipient)?;
    }
    let summary = match output {
        Some(path) if path != Path::new(STDIO) => export_to_file(dir, path, &options)?,
        _ => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                return Err(CliError::Usage(
                    "refusing to write a checkpoint stream to a terminal: give -o FILE, or pipe it".into(),
                ));
            }
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let summary = stream::export(dir, &mut out, &options)?;
            out.flush().map_err(CliError::io(STDIO))?;
            summary
        }
    };
    // stdout may be the stream: the summary goes to stderr, or as JSON.
    let encrypted = !options.recipients.is_empty();
    match format {
        Format::Json => eprintln!(
            "{}",
            json!({"files": summary.files, "bytes": summary.bytes_in, "stream_bytes": summary.bytes_out, "encrypted": encrypted})
        ),
        Format::Table => eprintln!(
            "exported {} files, {} as {}{}",
            summary.files,
            human(summary.bytes_in),
            human(summary.bytes_out),
            if encrypted { ", encrypted" } else { "" }
        ),
    }
    Ok(())
}

fn export_to_file(dir: &Path, path: &Path, options: &ExportOptions) -> Result<stream::Exported, CliError> {
    new_private_file(path, |file| {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        let summary = stream::export(dir, &mut out, options)?;
        out.flush().map_err(CliError::io(path))?;
        Ok(summary)
    })
}

/// A new file at `path`, private from the start, filled by `write`, then
/// synced with its name before success is reported; removed if anything
/// fails, so that no half-written stream or key is ever taken for a whole one.
fn new_private_file<T>(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<T, CliError>,
) -> Result<T, CliError> {
    let mut file = create_private(path)?;
    let result = write(&mut file).and_then(|written| {
        file.sync_all().map_err(CliError::io(path))?;
        durable::sync_dir(durable::parent_dir(path))?;
        Ok(written)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(path);
    }
    result
}

pub(super) fn import(
    format: Format,
    input: Option<&Path>,
    dir: &Path,
    identity: Option<&Path>,
    state_dir: Option<PathBuf>,
) -> Result<(), CliError> {
    let identities = identity.map(Identities::from_file).transpose()?;
    let seals = open_seals(state_dir);
    let options = ImportOptions {
        identities: identities.as_ref(),
        seals: seals.as_ref(),
    };
    let imported = match input {
        Some(path) if path != Path::new(STDIO) => {
            let file = std::fs::File::open(path).map_err(CliError::io(path))?;
            stream::import(file, dir, &options)?
        }
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(CliError::Usage(
                    "no stream on standard input: give FILE, or pipe the export into it".into(),
                ));
            }
            stream::import(stdin.lock(), dir, &options)?
        }
    };
    let dir = imported.dir.display().to_string();
    match format {
        Format::Json => println!(
            "{}",
            json!({"checkpoint": dir, "files": imported.files, "bytes": imported.bytes, "sealed": imported.sealed})
        ),
        Format::Table => println!(
            "imported {} files, {} into {dir}: verified{}",
            imported.files,
            human(imported.bytes),
            if imported.sealed { " and sealed" } else { "" }
        ),
    }
    Ok(())
}

/// podckptd's seals, where this user may write them: without them the
/// import still works, and the first restore hashes the checkpoint again.
fn open_seals(state_dir: Option<PathBuf>) -> Option<Seals> {
    let state_dir = match state_dir {
        Some(dir) => dir,
        None => crate::config::daemon_state_dir(Path::new(crate::config::DEFAULT_CONFIG))
            .map_err(|e| eprintln!("podckpt: {e}; not sealing the import"))
            .ok()?,
    };
    // Made by podckptd, with the modes its socket's users need: never here.
    if !state_dir.is_dir() {
        eprintln!(
            "podckpt: not sealing the import: {} does not exist (podckptd has not run here); the first restore will verify it in full",
            state_dir.display()
        );
        return None;
    }
    Seals::open(&state_dir)
        .map_err(|e| {
            eprintln!("podckpt: not sealing the import ({e}); the first restore will verify it in full");
        })
        .ok()
}

pub(super) fn keygen(format: Format, output: &Path) -> Result<(), CliError> {
    let (identity, recipient) = stream::generate_identity();
    new_private_file(output, |file| {
        file.write_all(identity.as_bytes()).map_err(CliError::io(output))
    })?;
    match format {
        Format::Json => println!(
            "{}",
            json!({"identity_file": output.display().to_string(), "recipient": recipient})
        ),
        Format::Table => {
            progress(
                format,
                format_args!("wrote the private key to {} (0600)", output.display()),
            );
            println!("{recipient}");
        }
    }
    Ok(())
}
