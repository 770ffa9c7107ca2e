//! Adding a contract through the daemon (`con contracts add FILE`): the
//! caller hands over a file's content; the daemon parses it with the
//! evaluator's parser (a bad file is refused with that parser's one-line
//! error and nothing is stored), records `contract.added` (the content
//! attached, the author's uid) and only then writes the file root-owned
//! (0644) in the contracts directory as `<id>.yaml`.
//!
//! Whose a contract is decides who its checks run as. A root-owned file
//! would run as root, so the author is recorded first and kept by content
//! (`Shared::authors`, seeded from the log's `contract.added` events at
//! start): a file that appears with that content runs as its author, under
//! whatever name. Were the write to fail after the record, the content was
//! recorded and never stored, never the other way round.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use con_event::payloads::ContractAdded;
use con_event::{Actor, BlobRef, NewEvent, escape_control};
use con_protocol::{AddContract, ContractAddedView, ErrorCode};

use crate::Shared;
use crate::identity::Identity;

/// A refusal: its class and one line.
type Refusal = (ErrorCode, String);

/// What is at the target name now: its content and whose it is.
struct Existing {
    content: Vec<u8>,
    author: u32,
}

/// Adds the contract `request` carries for `identity`; the answer once it
/// is recorded and stored.
pub(crate) async fn add(
    shared: &Arc<Shared>,
    identity: &Identity,
    request: AddContract,
) -> Result<ContractAddedView, Refusal> {
    if let Identity::Agent { name, .. } = identity
        && !shared.contract_authors().iter().any(|a| a == name)
    {
        return Err((
            ErrorCode::Forbidden,
            format!(
                "{identity}: only operators and agents of the {} role (tier operator or above) add contracts",
                con_config::SYSADMIN_ROLE
            ),
        ));
    }
    // The name is the caller's: shown, never used as a path.
    let file = escape_control(&request.file).into_owned();
    let rejected = |m: String| (ErrorCode::Rejected, m);
    let limit = con_contracts::load::MAX_FILE_BYTES;
    if request.content.len() as u64 > limit {
        return Err(rejected(format!(
            "{file}: {} bytes; a contract file may have at most {limit}",
            request.content.len()
        )));
    }
    let text = std::str::from_utf8(&request.content)
        .map_err(|_| rejected(format!("{file}: not valid UTF-8")))?;
    let contract = con_contracts::parse_contract(Path::new(&file), text)
        .map_err(|e| rejected(e.to_string()))?;
    let id = contract.id.clone();
    let name = con_contracts::stored_name(&id)
        .map_err(|m| rejected(format!("{file}: contract {id}: id: {m}")))?;
    if crate::health::BUILTIN_IDS.contains(&id.as_str()) {
        return Err(rejected(format!(
            "{file}: contract {id}: id: con's built-in check of itself has this id"
        )));
    }

    // One add at a time: what is there is judged and replaced in one step.
    let _adding = shared.adding.lock().await;
    let dir = shared.config.layout.contracts_dir();
    let lookup = shared.clone();
    let (target, taken) = (dir.join(&name), id.clone());
    let existing = tokio::task::spawn_blocking(move || {
        let loaded = crate::contracts::load(&lookup);
        let elsewhere = loaded
            .contracts
            .iter()
            .map(|c| (&c.file, Some(c.contract.id.as_str())))
            .chain(
                loaded
                    .broken
                    .iter()
                    .map(|b| (&b.file, b.contract.as_deref())),
            )
            .find(|(f, i)| *i == Some(taken.as_str()) && **f != target)
            .map(|(f, _)| f.clone());
        if let Some(other) = elsewhere {
            return Err((
                ErrorCode::Rejected,
                format!(
                    "contract {taken} is already defined in {}; adding it would define it twice",
                    other.display()
                ),
            ));
        }
        existing(&lookup, &target)
    })
    .await
    .map_err(|e| (ErrorCode::Unavailable, e.to_string()))??;
    let uid = identity.uid();
    if let Some(e) = &existing
        && e.author != uid
        && uid != 0
    {
        return Err((
            ErrorCode::Forbidden,
            format!(
                "{identity}: contract {id} in {} is uid {}'s; only root replaces another author's contract",
                dir.join(&name).display(),
                e.author
            ),
        ));
    }

    let path = dir.join(&name);
    let content = BlobRef::of(&request.content);
    let replaced = existing.as_ref().map(|e| BlobRef::of(&e.content));
    let mut attachments = vec![request.content.clone()];
    if let Some(e) = existing
        && replaced != Some(content)
    {
        attachments.push(e.content);
    }
    // An agent's add is its append like any other: its quotas bound how
    // much of the log its contracts may take.
    if let Some(me) = identity.agent() {
        let sizes: Vec<u64> = attachments.iter().map(|a| a.len() as u64).collect();
        crate::quota::admit_agent(shared, me, id.len() + name.len() + 128, &sizes).await?;
    }
    let event = NewEvent {
        actor: Actor {
            uid,
            agent: identity.agent().map(str::to_owned),
        },
        session: None,
        task: None,
        causation: None,
        payload: ContractAdded {
            contract: id.clone(),
            path: path.display().to_string(),
            author_uid: uid,
            author_agent: identity.agent().map(str::to_owned),
            content,
            replaced,
        }
        .into(),
        attachments,
    };
    let seq = shared
        .appender
        .submit(event)
        .wait_async()
        .await
        .map_err(|e| {
            (
                ErrorCode::Unavailable,
                format!("recording contract.added: {e}"),
            )
        })?
        .seq;
    // Known before the file can be seen: an evaluation that loads it runs
    // it as its author, never as root.
    shared
        .authors
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(content.digest, uid);
    let bytes = request.content;
    tokio::task::spawn_blocking(move || {
        con_provision::contract_file::install_contract(&dir, &name, &bytes)
    })
    .await
    .map_err(|e| (ErrorCode::Unavailable, e.to_string()))?
    .map_err(|e| {
        (
            ErrorCode::Unavailable,
            format!("contract {id} recorded (seq {seq}) but not stored: {e}"),
        )
    })?;
    Ok(ContractAddedView {
        contract: id,
        path: path.display().to_string(),
        author_uid: uid,
        replaced: replaced.is_some(),
        seq,
    })
}

/// The file at `target`, if there is one: its content and author (its
/// owner, or for a root-owned file the author its content was added by).
/// Anything but a regular file there is refused rather than replaced.
fn existing(shared: &Shared, target: &PathBuf) -> Result<Option<Existing>, Refusal> {
    let unavailable =
        |e: std::io::Error| (ErrorCode::Unavailable, format!("{}: {e}", target.display()));
    let mut f = match std::fs::File::options()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(target)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err((
                ErrorCode::Rejected,
                format!("{}: a symbolic link; not replaced", target.display()),
            ));
        }
        Err(e) => return Err(unavailable(e)),
    };
    let meta = f.metadata().map_err(unavailable)?;
    if !meta.file_type().is_file() {
        return Err((
            ErrorCode::Rejected,
            format!("{}: not a regular file; not replaced", target.display()),
        ));
    }
    let mut content = Vec::new();
    f.by_ref()
        .take(con_contracts::load::MAX_FILE_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(unavailable)?;
    let author = match meta.uid() {
        0 => shared
            .authors
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&con_event::Digest::of(&content))
            .copied()
            .unwrap_or(0),
        owner => owner,
    };
    Ok(Some(Existing { content, author }))
}
