//! Function packages: a gzip'd tar of the function folder. Unpacked defensively (no
//! absolute or `..` paths, no links out of the folder, no devices, bounded size and
//! count whatever the headers claim), then dependencies are installed with npm.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use yun_types::{ErrorCode, YunError};

#[derive(Debug, Clone, Copy)]
pub struct PackageLimits {
    pub max_unpacked_bytes: u64,
    pub max_files: usize,
}

impl Default for PackageLimits {
    fn default() -> Self {
        // SCF's limit for an uploaded package is 500 MB unpacked.
        Self {
            max_unpacked_bytes: 500 << 20,
            max_files: 50_000,
        }
    }
}

fn invalid(message: impl Into<String>) -> YunError {
    YunError::new(ErrorCode::FunctionCodeInvalid, message)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A relative path with only normal components, or an error naming the entry.
fn safe_relative(path: &Path) -> Result<PathBuf, YunError> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            _ => {
                return Err(invalid(format!(
                    "archive entry {:?} leaves the function folder",
                    path.display().to_string()
                )))
            }
        }
    }
    Ok(out)
}

/// Whether a symlink at `link` (relative to the root) pointing to `target` stays inside.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// Unpacks a `.tar.gz` into `dest` (which must not exist yet). On error `dest` is removed.
pub fn unpack(archive: &[u8], dest: &Path, limits: PackageLimits) -> Result<u64, YunError> {
    let result = unpack_inner(archive, dest, limits);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(dest);
    }
    result
}

fn unpack_inner(archive: &[u8], dest: &Path, limits: PackageLimits) -> Result<u64, YunError> {
    std::fs::create_dir_all(dest).map_err(YunError::internal)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let entries = tar
        .entries()
        .map_err(|e| invalid(format!("not a gzip'd tar archive: {e}")))?;
    let (mut total, mut files) = (0u64, 0usize);
    for entry in entries {
        let mut entry = entry.map_err(|e| invalid(format!("corrupt archive: {e}")))?;
        files += 1;
        if files > limits.max_files {
            return Err(invalid(format!(
                "archive has more than {} entries",
                limits.max_files
            )));
        }
        let raw_path = entry
            .path()
            .map_err(|e| invalid(format!("bad entry name: {e}")))?
            .into_owned();
        let rel = safe_relative(&raw_path)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(YunError::internal)?;
        } else if kind.is_file() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(YunError::internal)?;
            }
            let budget = limits.max_unpacked_bytes - total;
            let mut out = std::fs::File::create(&target).map_err(YunError::internal)?;
            // Read at most one byte past the budget: the header's size is not trusted.
            let copied = std::io::copy(&mut (&mut entry).take(budget + 1), &mut out)
                .map_err(|e| invalid(format!("corrupt archive: {e}")))?;
            total += copied;
            if total > limits.max_unpacked_bytes {
                return Err(invalid(format!(
                    "archive unpacks to more than {} bytes",
                    limits.max_unpacked_bytes
                )));
            }
            let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
            set_mode(&target, if executable { 0o755 } else { 0o644 })?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(|e| invalid(format!("bad link: {e}")))?
                .ok_or_else(|| invalid("symlink without a target"))?;
            if !link_stays_inside(&rel, &link) {
                return Err(invalid(format!(
                    "symlink {:?} points outside the function folder",
                    rel.display().to_string()
                )));
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(YunError::internal)?;
            }
            std::os::unix::fs::symlink(&link, &target).map_err(YunError::internal)?;
        } else {
            return Err(invalid(format!(
                "archive entry {:?} is not a file, folder or symlink",
                rel.display().to_string()
            )));
        }
    }
    Ok(total)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), YunError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(YunError::internal)
}

/// Checks that the handler's file is present: `index.main` needs `index.js`.
pub fn check_handler_file(dir: &Path, handler: &str) -> Result<(), YunError> {
    let (file, export) = handler
        .rsplit_once('.')
        .filter(|(f, e)| !f.is_empty() && !e.is_empty())
        .ok_or_else(|| {
            YunError::invalid_param(format!("handler {handler:?} must look like file.export"))
        })?;
    safe_relative(Path::new(file))?;
    let candidates = [
        format!("{file}.js"),
        format!("{file}.cjs"),
        format!("{file}/index.js"),
    ];
    if !candidates.iter().any(|c| dir.join(c).is_file()) {
        return Err(invalid(format!(
            "the package has no {file}.js for handler {file}.{export}"
        )));
    }
    Ok(())
}

/// Dependencies `package.json` declares that neither the package (`node_modules`) nor
/// the platform layer provides. Empty means there is nothing to install.
pub fn missing_dependencies(dir: &Path, layer_packages: &[&str]) -> Result<Vec<String>, YunError> {
    let manifest = dir.join("package.json");
    if !manifest.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&manifest).map_err(YunError::internal)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("package.json is not valid JSON: {e}")))?;
    let deps = json
        .get("dependencies")
        .and_then(|d| d.as_object())
        .cloned()
        .unwrap_or_default();
    Ok(deps
        .keys()
        .filter(|name| !layer_packages.contains(&name.as_str()))
        .filter(|name| {
            !dir.join("node_modules")
                .join(name.as_str())
                .join("package.json")
                .is_file()
        })
        .cloned()
        .collect())
}

/// `npm install --omit=dev` in `dir` with a shared cache; bounded in time.
pub async fn npm_install(
    dir: &Path,
    npm: &Path,
    cache: &Path,
    timeout: Duration,
) -> Result<(), YunError> {
    let mut cmd = tokio::process::Command::new(npm);
    cmd.args([
        "install",
        "--omit=dev",
        "--no-audit",
        "--no-fund",
        "--ignore-scripts",
        "--loglevel=error",
    ])
    .arg("--cache")
    .arg(cache)
    .env("npm_config_update_notifier", "false")
    .current_dir(dir)
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| {
            invalid(format!(
                "npm install took longer than {} s",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| YunError::internal(format!("cannot run npm: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: String = stderr
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(invalid(format!("npm install failed:\n{tail}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(
        build: impl FnOnce(&mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>),
    ) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        build(&mut builder);
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn file(b: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>, path: &str, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name to build hostile archives.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, body).unwrap();
    }

    fn symlink(b: &mut tar::Builder<flate2::write::GzEncoder<Vec<u8>>>, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_path(path).unwrap();
        h.set_link_name(target).unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    #[test]
    fn unpacks_a_normal_package() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("code");
        let bytes = archive(|b| {
            file(b, "index.js", b"exports.main = async () => 1");
            file(b, "lib/util.js", b"");
            symlink(b, "lib/alias.js", "../index.js");
        });
        assert_eq!(unpack(&bytes, &dest, PackageLimits::default()).unwrap(), 28);
        check_handler_file(&dest, "index.main").unwrap();
        assert!(dest.join("lib/alias.js").is_file());
    }

    #[test]
    fn refuses_escapes_bombs_and_garbage_leaving_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(Vec<u8>, PackageLimits)> = vec![
            (
                archive(|b| file(b, "../evil.js", b"x")),
                PackageLimits::default(),
            ),
            (
                archive(|b| file(b, "/etc/evil.js", b"x")),
                PackageLimits::default(),
            ),
            (
                archive(|b| symlink(b, "up", "../../etc/passwd")),
                PackageLimits::default(),
            ),
            (
                archive(|b| symlink(b, "abs", "/etc/passwd")),
                PackageLimits::default(),
            ),
            (
                archive(|b| file(b, "big.bin", &[0u8; 4096])),
                PackageLimits {
                    max_unpacked_bytes: 1000,
                    max_files: 10,
                },
            ),
            (
                archive(|b| (0..20).for_each(|i| file(b, &format!("f{i}"), b""))),
                PackageLimits {
                    max_unpacked_bytes: 1000,
                    max_files: 10,
                },
            ),
            (b"this is not gzip".to_vec(), PackageLimits::default()),
        ];
        for (i, (bytes, limits)) in cases.into_iter().enumerate() {
            let dest = dir.path().join(format!("case{i}"));
            let err = unpack(&bytes, &dest, limits).unwrap_err();
            assert_eq!(err.code, ErrorCode::FunctionCodeInvalid, "case {i}: {err}");
            assert!(!dest.exists(), "case {i} left files behind");
        }
        assert!(!dir.path().join("evil.js").exists());
    }

    #[test]
    fn missing_handler_file_and_bad_handler_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            check_handler_file(dir.path(), "index.main")
                .unwrap_err()
                .code,
            ErrorCode::FunctionCodeInvalid
        );
        assert_eq!(
            check_handler_file(dir.path(), "main").unwrap_err().code,
            ErrorCode::InvalidParam
        );
        assert!(check_handler_file(dir.path(), "../x.main").is_err());
    }

    #[test]
    fn layer_and_shipped_dependencies_need_no_install() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"dependencies":{"wx-server-sdk":"~4","lodash":"4","dayjs":"1"}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("node_modules/dayjs")).unwrap();
        std::fs::write(dir.path().join("node_modules/dayjs/package.json"), "{}").unwrap();
        assert_eq!(
            missing_dependencies(dir.path(), &["wx-server-sdk"]).unwrap(),
            vec!["lodash".to_string()]
        );
    }
}
