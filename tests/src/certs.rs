//! `commerce-mesh certs <dir>`: makes sure `dir` holds the mesh's
//! development CA and a certificate for every server and caller (see
//! `commerce_platform::tls::certs`); files already there and still valid are
//! kept, so it is safe to run before every start.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs with the arguments after `certs`.
pub fn run(args: &[OsString]) -> ExitCode {
    let [dir] = args else {
        eprintln!("usage: commerce-mesh certs <dir>");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    match commerce_platform::tls::certs::ensure_dev_certs(&dir) {
        Ok(report) => {
            println!(
                "{}: issued [{}], kept [{}]",
                dir.display(),
                report.issued.join(", "),
                report.kept.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("certs: {error:#}");
            ExitCode::FAILURE
        }
    }
}
