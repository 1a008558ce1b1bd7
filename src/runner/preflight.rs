//! Preflight: before any other MI call, one look at the account, so a wrong key pair,
//! workspace, project or bucket costs a request or two, not a million failed rows.

use serde_json::Value;

use super::{FatalStop, Runner};
use crate::api::Call;

/// The bucket MI links to the workspace, if its details name one.
pub fn linked_bucket(workspace: &Value) -> Option<&str> {
    workspace
        .pointer("/result/bucketName")
        .and_then(Value::as_str)
}

/// The refusal for buckets other than the linked one, unless the user allowed them.
pub fn bucket_refusal(linked: &str, buckets: &[String], allow_other: bool) -> Option<FatalStop> {
    let others: Vec<&str> = buckets
        .iter()
        .map(String::as_str)
        .filter(|b| *b != linked)
        .collect();
    if others.is_empty() || allow_other {
        return None;
    }
    Some(FatalStop {
        message: format!(
            "the workspace is linked to bucket `{linked}`, but keys to send are in {}",
            others
                .iter()
                .map(|b| format!("`{b}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        hint: Some(
            "check --bucket and the manifest's bucket column; if MI accepts other buckets for \
             this workspace, pass --allow-other-bucket"
                .into(),
        ),
    })
}

impl Runner {
    /// Reads the workspace and the project; the bucket the workspace is linked to, if its
    /// details name one, or why the run cannot start.
    pub(super) async fn look_at_account(&self) -> Result<Option<String>, FatalStop> {
        let workspace = self.look(true).await?;
        self.look(false).await?;
        Ok(linked_bucket(&workspace).map(str::to_owned))
    }

    async fn look(&self, workspace: bool) -> Result<Value, FatalStop> {
        let what = if workspace { "workspace" } else { "project" };
        let finished = self
            .call_mi(Call::Lookup, || async {
                if workspace {
                    self.client.workspace().await
                } else {
                    self.client.project().await
                }
            })
            .await;
        finished.last.result.map_err(|error| {
            let target = self.client.target();
            let named = if workspace {
                format!("workspace `{}`", target.workspace)
            } else {
                format!(
                    "project `{}` of workspace `{}`",
                    target.project, target.workspace
                )
            };
            FatalStop {
                message: format!(
                    "preflight: cannot read the {what}: {error} ({named} at {})",
                    target.endpoint
                ),
                hint: error.hint().map(str::to_owned).or_else(|| {
                    Some("MI is not answering; try again later, or check --endpoint".into())
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn linked_bucket_is_read_from_the_result() {
        let ws = json!({"code": "0", "result": {"workspaceName": "w", "bucketName": "media"}});
        assert_eq!(linked_bucket(&ws), Some("media"));
        assert_eq!(linked_bucket(&json!({"result": {}})), None);
    }

    #[test]
    fn other_buckets_are_refused_unless_allowed() {
        let buckets = vec!["media".to_string(), "elsewhere".to_string()];
        let refusal = bucket_refusal("media", &buckets, false).unwrap();
        assert!(
            refusal.message.ends_with("keys to send are in `elsewhere`"),
            "{refusal:?}"
        );
        assert!(refusal.hint.unwrap().contains("--allow-other-bucket"));
        assert_eq!(bucket_refusal("media", &buckets, true), None);
        assert_eq!(bucket_refusal("media", &buckets[..1], false), None);
    }
}
