//! `shoal authority …` (the app authority's side of enrolment, run where its key is kept) and `shoal enrol …`
//! (the device's side). Certificates, revocation lists and requests travel as one line of text (hex for the
//! binary forms), so they can be pasted, mailed or put in a QR code.

use crate::{print_line, usage, CliError};
use serde_json::json;
use shoaldb::enrolment::{self, EnrolmentRequest, Validity};
use shoaldb::security::{Certificate, CertificateChain, Grant, Revocation, RevocationList, SigningKey, VerifyingKey};
use shoaldb::util::{hex, sources::Sources};
use shoaldb::{PeerId, Store};
use std::path::Path;

/// The authority's private key, in its directory.
const KEY_FILE: &str = "authority.key";
/// The last serial issued, in the authority's directory.
const SERIAL_FILE: &str = "serial";
/// The latest revocation list, in the authority's directory.
const REVOCATIONS_FILE: &str = "revocations";
/// The signing keys of the devices this authority certified, a line each, in the authority's directory (what
/// `shoal authority roster` lists).
const DEVICES_FILE: &str = "devices";

fn failed(what: impl std::fmt::Display) -> CliError {
    CliError::Failed(what.to_string())
}

/// `shoal authority init|issue|revoke|roster|show …`.
pub fn authority(args: &[String]) -> Result<(), CliError> {
    match args {
        [cmd, dir] if cmd == "init" => init(Path::new(dir)),
        [cmd, dir, request, rest @ ..] if cmd == "issue" => issue(Path::new(dir), request, rest),
        [cmd, dir, rest @ ..] if cmd == "revoke" => revoke(Path::new(dir), rest),
        [cmd, dir, rest @ ..] if cmd == "roster" => roster(Path::new(dir), rest),
        [cmd, text] if cmd == "show" => show(&read_text(text)?),
        _ => Err(usage(
            "authority: init DIR | issue DIR REQUEST [options] | revoke DIR [options] | roster DIR [--member KEY …] \
             [--complete] | show TEXT|FILE",
        )),
    }
}

/// `shoal --db PATH enrol request|install|revocations …`.
pub fn enrol(store: &Store, args: &[String]) -> Result<(), CliError> {
    match args {
        [cmd, name] if cmd == "request" => {
            let request = enrolment::request(store, name).map_err(failed)?;
            print_line(&request.to_string())
        }
        [cmd, authority, certs @ ..] if cmd == "install" && !certs.is_empty() => {
            let authority = VerifyingKey::from_hex(&read_text(authority)?).map_err(failed)?;
            let chain = certs
                .iter()
                .map(|c| Certificate::decode(&unhex(&read_text(c)?)?).map_err(failed))
                .collect::<Result<Vec<_>, _>>()?;
            let e = enrolment::install(store, &chain, &[authority]).map_err(failed)?;
            print_line(&json!({"installed": e.chain().leaf().to_string()}).to_string())
        }
        [cmd, list] if cmd == "revocations" => {
            let list = RevocationList::decode(&unhex(&read_text(list)?)?).map_err(failed)?;
            let news = enrolment::install_revocations(store, &list).map_err(failed)?;
            print_line(&json!({"list": list.body().number, "new": news}).to_string())
        }
        _ => Err(usage("enrol: request NAME | install AUTHORITY CERT [CERT…] | revocations LIST")),
    }
}

/// A text argument: the contents of the file it names, or itself.
fn read_text(arg: &str) -> Result<String, CliError> {
    let path = Path::new(arg);
    let text = if path.is_file() { std::fs::read_to_string(path)? } else { arg.to_string() };
    Ok(text.trim().to_string())
}

fn unhex(text: &str) -> Result<Vec<u8>, CliError> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return Err(failed("expected hex digits"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| failed("expected hex digits")))
        .collect()
}

fn load_key(dir: &Path) -> Result<SigningKey, CliError> {
    let path = dir.join(KEY_FILE);
    let bytes = std::fs::read(&path).map_err(|e| failed(format!("cannot read {}: {e}", path.display())))?;
    SigningKey::from_bytes(&bytes).map_err(failed)
}

/// Writes `bytes` to `path`, readable by its owner only, through a temporary file (never half written).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn init(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(KEY_FILE);
    if path.exists() {
        return Err(failed(format!("{} exists: this directory already holds an authority", path.display())));
    }
    let key = SigningKey::generate().map_err(failed)?;
    write_private(&path, &key.to_bytes())?;
    print_line(&json!({"authority": key.verifying_key().to_hex()}).to_string())
}

fn issue(dir: &Path, request: &str, options: &[String]) -> Result<(), CliError> {
    let key = load_key(dir)?;
    let request = EnrolmentRequest::parse(&read_text(request)?).map_err(failed)?;
    let mut grants = Vec::new();
    let mut days = 365u64;
    let mut name = None;
    let mut it = options.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| usage(format!("{flag} needs a value")));
        match flag.as_str() {
            "--grant" => grants.push(Grant::parse(value()?).map_err(failed)?),
            "--days" => days = value()?.parse().map_err(|_| usage("--days takes a number"))?,
            "--name" => name = Some(value()?.clone()),
            other => return Err(usage(format!("issue: unknown option {other}"))),
        }
    }
    let request = EnrolmentRequest { name: name.unwrap_or(request.name.clone()), ..request };
    let serial_path = dir.join(SERIAL_FILE);
    let serial = match std::fs::read_to_string(&serial_path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|_| failed(format!("{} is corrupt", serial_path.display())))? + 1,
        Err(_) => 1,
    };
    let now = Sources::system().now_ms();
    let cert = enrolment::issue(&key, &request, serial, grants, Validity::days_from(now, days)).map_err(failed)?;
    write_private(&serial_path, serial.to_string().as_bytes())?;
    let mut devices = certified_devices(dir)?;
    if !devices.contains(&request.signing_key) {
        devices.push(request.signing_key);
        let lines: String = devices.iter().map(|k| format!("{}\n", k.to_hex())).collect();
        write_private(&dir.join(DEVICES_FILE), lines.as_bytes())?;
    }
    print_line(&hex(&cert.encode()))
}

/// The devices this authority certified (see [`DEVICES_FILE`]).
fn certified_devices(dir: &Path) -> Result<Vec<VerifyingKey>, CliError> {
    match std::fs::read_to_string(dir.join(DEVICES_FILE)) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| VerifyingKey::from_hex(l.trim()).map_err(failed))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// The latest revocation list of the authority in `dir`: its number and entries (0 and none before the first).
fn latest_list(dir: &Path) -> Result<(u64, Vec<Revocation>), CliError> {
    match std::fs::read_to_string(dir.join(REVOCATIONS_FILE)) {
        Ok(text) => {
            let list = RevocationList::decode(&unhex(text.trim())?).map_err(failed)?;
            Ok((list.body().number, list.body().entries.clone()))
        }
        Err(_) => Ok((0, Vec::new())),
    }
}

/// Issues the next revocation list with `entries`, keeps it in `dir` and prints it.
fn next_list(dir: &Path, key: &SigningKey, number: u64, entries: Vec<Revocation>) -> Result<(), CliError> {
    let list = enrolment::revoke(key, number + 1, Sources::system().now_ms(), entries).map_err(failed)?;
    let text = hex(&list.encode());
    write_private(&dir.join(REVOCATIONS_FILE), text.as_bytes())?;
    print_line(&text)
}

/// `roster DIR [--member KEY …] [--complete]`: the next revocation list, whose roster (replacing any earlier one)
/// lists every device this authority certified and each `--member` (a device an intermediate authority certified),
/// closing the membership now. Refused when certificates were issued before the authority kept their record, unless
/// `--complete` says the members given are all.
fn roster(dir: &Path, options: &[String]) -> Result<(), CliError> {
    let key = load_key(dir)?;
    let mut members = certified_devices(dir)?;
    let mut complete = false;
    let mut it = options.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--member" => {
                let value = it.next().ok_or_else(|| usage("--member needs a signing key"))?;
                members.push(VerifyingKey::from_hex(value).map_err(failed)?);
            }
            "--complete" => complete = true,
            other => return Err(usage(format!("roster: unknown option {other}"))),
        }
    }
    // Every device certified before now and left off is revoked: an authority that certified devices before it kept
    // their record must name them (or say the members given are all).
    if !complete && dir.join(SERIAL_FILE).exists() && !dir.join(DEVICES_FILE).exists() {
        return Err(failed(format!(
            "{} holds no record of the devices certified so far (issued before it was kept): every device left off a \
             roster is revoked; name them with --member KEY, then add --complete",
            dir.display()
        )));
    }
    let (number, mut entries) = latest_list(dir)?;
    entries.retain(|e| !matches!(e, Revocation::Roster { .. }));
    entries.push(enrolment::roster(members, Sources::system().now_ms()));
    next_list(dir, &key, number, entries)
}

fn revoke(dir: &Path, options: &[String]) -> Result<(), CliError> {
    let key = load_key(dir)?;
    let (number, mut entries) = latest_list(dir)?;
    let mut it = options.iter().peekable();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| usage(format!("{flag} needs a value")));
        let entry = match flag.as_str() {
            "--serial" => Revocation::Certificate {
                issuer: key.verifying_key(),
                serial: value()?.parse().map_err(|_| usage("--serial takes a number"))?,
            },
            "--device" => Revocation::Device { signing_key: VerifyingKey::from_hex(value()?).map_err(failed)? },
            "--author" => {
                let author = u64::from_str_radix(value()?, 16).map_err(|_| usage("--author takes 16 hex digits"))?;
                let accept_until = if it.peek().is_some_and(|f| *f == "--until") {
                    it.next();
                    let n = it.next().ok_or_else(|| usage("--until needs a counter"))?;
                    Some(n.parse().map_err(|_| usage("--until takes a number"))?)
                } else {
                    None
                };
                Revocation::Author { author: PeerId(author), accept_until }
            }
            other => return Err(usage(format!("revoke: unknown option {other}"))),
        };
        if !entries.contains(&entry) {
            entries.push(entry);
        }
    }
    next_list(dir, &key, number, entries)
}

/// Prints what a request, certificate, chain or revocation list says, as JSON.
fn show(text: &str) -> Result<(), CliError> {
    if let Ok(request) = EnrolmentRequest::parse(text) {
        let device_id = request.signing_key.device_id().to_string();
        return print_line(
            &json!({"request": {"name": request.name, "signing_key": request.signing_key.to_hex(),
                "noise_key": request.noise_key.to_hex(), "device_id": device_id}})
            .to_string(),
        );
    }
    let bytes = unhex(text)?;
    if let Ok(cert) = Certificate::decode(&bytes) {
        return print_line(&certificate_json(&cert).to_string());
    }
    if let Ok(chain) = CertificateChain::decode(&bytes) {
        let certs: Vec<_> = chain.certificates().iter().map(certificate_json).collect();
        return print_line(&json!({ "chain": certs }).to_string());
    }
    match RevocationList::decode(&bytes) {
        Ok(list) => {
            let b = list.body();
            let entries: Vec<String> = b
                .entries
                .iter()
                .map(|e| match e {
                    Revocation::Roster { members, until_ms } => format!(
                        "Roster {{ until_ms: {until_ms}, members: [{}] }}",
                        members.iter().map(|k| k.to_hex()).collect::<Vec<_>>().join(", ")
                    ),
                    other => format!("{other:?}"),
                })
                .collect();
            print_line(
                &json!({"revocations": {"issuer": b.issuer.to_hex(), "number": b.number, "issued_ms": b.issued_ms,
                    "entries": entries}})
                .to_string(),
            )
        }
        Err(e) => Err(failed(format!("not a request, certificate, chain or revocation list: {e}"))),
    }
}

fn certificate_json(cert: &Certificate) -> serde_json::Value {
    let b = cert.body();
    json!({"certificate": {
        "serial": b.serial, "name": b.name, "issuer": b.issuer.to_hex(), "signing_key": b.signing_key.to_hex(),
        "device_id": b.signing_key.device_id().to_string(), "noise_key": b.noise_key.map(|k| hex(&k)),
        "not_before_ms": b.not_before_ms, "not_after_ms": b.not_after_ms, "issues": b.issues,
        "grants": b.grants.iter().map(Grant::to_string).collect::<Vec<_>>(),
    }})
}
