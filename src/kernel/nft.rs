//! Running `nft`: applying a batch as one transaction, and listing the
//! guard's table. Through the `nftables` crate (JSON over `nft -j`), never
//! by reading nft's text output.
//!
//! A batch is the crate's JSON, fed to `nft -j -f -` here rather than by
//! the crate's `apply_ruleset_async`: that one leaves nft's standard error
//! on the guard's own, so a failure would come back without its reason.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use nftables::helper::{self, NftablesError};
use nftables::schema::Nftables;

/// How long one `nft` run may take before the guard gives up on it.
const DEADLINE: Duration = Duration::from_secs(5);

/// Why nftables could not be used, as the operator reads it.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("the nft program was not found (Debian: apt install nftables)")]
    Missing,
    #[error("nft is not permitted to change the firewall: it needs CAP_NET_ADMIN ({0})")]
    NotPermitted(String),
    #[error("nft failed: {0}")]
    Failed(String),
    #[error("nft did not answer within {}s", DEADLINE.as_secs())]
    Timeout,
}

impl From<NftablesError> for NftError {
    fn from(e: NftablesError) -> NftError {
        match e {
            NftablesError::NftExecution { inner, .. }
                if inner.kind() == std::io::ErrorKind::NotFound =>
            {
                NftError::Missing
            }
            NftablesError::NftFailed { stderr, .. } => {
                let stderr = stderr.trim().replace('\n', " / ");
                if stderr.contains("Operation not permitted") {
                    NftError::NotPermitted(stderr)
                } else {
                    NftError::Failed(stderr)
                }
            }
            other => NftError::Failed(other.to_string()),
        }
    }
}

/// Applies `batch` as one transaction: all of it, or nothing.
pub async fn apply(batch: &Nftables<'_>) -> Result<(), NftError> {
    let payload = serde_json::to_vec(batch).map_err(|e| NftError::Failed(e.to_string()))?;
    match tokio::time::timeout(DEADLINE, run_nft(&payload)).await {
        Ok(done) => done,
        Err(_) => Err(NftError::Timeout),
    }
}

async fn run_nft(payload: &[u8]) -> Result<(), NftError> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NftError::Missing,
            _ => NftError::Failed(format!("cannot run nft: {e}")),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(payload)
            .await
            .map_err(|e| NftError::Failed(format!("writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NftError::Failed(format!("waiting for nft: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(NftError::from(NftablesError::NftFailed {
        program: "nft".into(),
        hint: "applying a batch".to_string(),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }))
}

/// `nft -j list table inet TABLE`.
pub async fn list(table: &str) -> Result<Nftables<'static>, NftError> {
    let args = ["list", "table", "inet", table];
    let listing = helper::get_current_ruleset_with_args_async(helper::DEFAULT_NFT, &args);
    match tokio::time::timeout(DEADLINE, listing).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(NftError::Timeout),
    }
}
