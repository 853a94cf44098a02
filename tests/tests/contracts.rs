//! The `.proto` contracts checked with buf (proto/buf.yaml): `buf lint`
//! with the standard rules and the module's three exceptions, and `buf
//! breaking` against the contracts of the last release, the newest image
//! in `proto/releases/` (README.md, "Contracts and compatibility"). A copy of the contracts with one field renumbered
//! proves the comparison catches a wire-incompatible change.
//!
//! buf comes from npm (`@bufbuild/buf`, installed by deploy/setup.sh); the
//! tests find it through `$BUF`, else `.tools/bin/buf`, else PATH.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The field the negative check renumbers: `Balance.balance` (number 2) of
/// the point service, in its file.
const RENUMBERED_FILE: &str = "commerce/point/v1/point.proto";
const RENUMBERED_MESSAGE: &str = "Balance";
const RENUMBERED_FIELD: (&str, u32) = ("balance", 2);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the repository")
        .to_path_buf()
}

/// buf: `$BUF`, else `.tools/bin/buf`, else `buf` on PATH; missing
/// everywhere, the test fails saying where it comes from.
fn buf() -> PathBuf {
    if let Some(path) = std::env::var_os("BUF").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let tools = repo_root().join(".tools/bin/buf");
    if tools.is_file() {
        return tools;
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("buf"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "buf not found ($BUF, .tools/bin/buf, PATH): run deploy/setup.sh, which \
                 installs it (npm @bufbuild/buf)"
            )
        })
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {:?} ({e}); deploy/setup.sh installs buf",
            command.get_program()
        )
    })
}

fn report(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The last release of the contracts: the newest image in `proto/releases/`
/// (`contracts-vX.Y.Z.binpb`, built with `buf build` from the release's tag
/// when it was cut). Checked in, so the comparison needs neither tags nor
/// history in the clone; a tree without one fails: the comparison is the
/// point, and skipping it would let a breaking change through.
fn last_release() -> (String, String) {
    let dir = repo_root().join("proto/releases");
    let version = |name: &str| -> Option<Vec<u64>> {
        name.strip_prefix("contracts-v")?
            .strip_suffix(".binpb")?
            .split('.')
            .map(|part| part.parse().ok())
            .collect()
    };
    let newest = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| Some((version(&name)?, name)))
        .max();
    let (_, name) = newest.unwrap_or_else(|| {
        panic!(
            "no contracts-vX.Y.Z.binpb in {}: the contracts cannot be compared with their last \
             release (README.md, \"Contracts and compatibility\", says how one is cut)",
            dir.display()
        )
    });
    let tag = name.trim_end_matches(".binpb").to_owned();
    (tag, dir.join(name).display().to_string())
}

/// `buf breaking <module> --against <last release>`.
fn breaking(module: &Path) -> (String, Output) {
    let (tag, against) = last_release();
    let output = run(Command::new(buf())
        .arg("breaking")
        .arg(module)
        .arg("--against")
        .arg(&against)
        .current_dir(repo_root()));
    (tag, output)
}

/// A scratch directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "commerce-contracts-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("making a scratch directory");
        Self(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies the module's buf.yaml and .proto files from `from` into `to`.
fn copy_module(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("reading proto/") {
        let path = entry.expect("a directory entry").path();
        let target = to.join(path.file_name().expect("a file name"));
        if path.is_dir() {
            std::fs::create_dir_all(&target).expect("making a directory");
            copy_module(&path, &target);
        } else if path.extension().is_some_and(|e| e == "proto") || path.ends_with("buf.yaml") {
            std::fs::copy(&path, &target).expect("copying a contract");
        }
    }
}

/// `message <message> { ... }` of `source` with its field `<name> =
/// <number>;` given `new_number` instead.
fn renumber(source: &str, message: &str, (name, number): (&str, u32), new_number: u32) -> String {
    let start = source
        .find(&format!("\nmessage {message} {{"))
        .unwrap_or_else(|| panic!("no message {message} in {RENUMBERED_FILE}"));
    let end = start
        + source[start..]
            .find("\n}")
            .unwrap_or_else(|| panic!("message {message} never ends"));
    let field = format!(" {name} = {number};");
    let at = start
        + source[start..end].find(&field).unwrap_or_else(|| {
            panic!("message {message} in {RENUMBERED_FILE} has no field `{name} = {number}`")
        });
    format!(
        "{} {name} = {new_number};{}",
        &source[..at],
        &source[at + field.len()..]
    )
}

#[test]
fn the_contracts_pass_buf_lint() {
    let output = run(Command::new(buf())
        .args(["lint", "proto"])
        .current_dir(repo_root()));
    assert!(
        output.status.success(),
        "buf lint proto:\n{}",
        report(&output)
    );
}

#[test]
fn the_contracts_are_wire_compatible_with_their_last_release() {
    let (tag, output) = breaking(&repo_root().join("proto"));
    assert!(
        output.status.success(),
        "proto/ breaks the contracts of {tag} (buf breaking):\n{}\nA change old peers \
         cannot read needs a new package (commerce.<service>.v2) instead; see README.md, \
         \"Contracts and compatibility\".",
        report(&output)
    );
}

#[test]
fn buf_breaking_catches_a_renumbered_field() {
    let scratch = ScratchDir::new();
    copy_module(&repo_root().join("proto"), &scratch.0);
    // The copy as it is compares clean, so what fails below is the change.
    let (tag, output) = breaking(&scratch.0);
    assert!(
        output.status.success(),
        "an unchanged copy of proto/ breaks {tag}:\n{}",
        report(&output)
    );

    let file = scratch.0.join(RENUMBERED_FILE);
    let source = std::fs::read_to_string(&file).expect("reading the contract");
    std::fs::write(
        &file,
        renumber(&source, RENUMBERED_MESSAGE, RENUMBERED_FIELD, 15),
    )
    .expect("writing the changed contract");
    let (_, output) = breaking(&scratch.0);
    let found = report(&output);
    assert!(
        !output.status.success(),
        "buf breaking let a renumbered field through:\n{found}"
    );
    let (name, number) = RENUMBERED_FIELD;
    let expected = format!(
        "Previously present field \"{number}\" with name \"{name}\" on message \
         \"{RENUMBERED_MESSAGE}\" was deleted"
    );
    assert!(
        found.contains(RENUMBERED_FILE) && found.contains(&expected),
        "buf breaking failed without naming {RENUMBERED_MESSAGE}.{name} ({expected}):\n{found}"
    );
}
