//! The A2A client: send a message, read a task, cancel a task, over JSON-RPC in both protocol
//! versions in use: A2A 1.0 (`SendMessage`, `GetTask`, `CancelTask`; proto-JSON enums such as
//! `TASK_STATE_COMPLETED`) and 0.3 (`message/send`, `tasks/get`, `tasks/cancel`; `kind`-tagged
//! objects and states such as `completed`). Both answers map onto one [`RemoteTask`].
//!
//! Every request goes through the [`Outbound`] guard (internal addresses refused, body and
//! time bounded). A run's input is sent as one text part: a JSON string as itself, anything
//! else as its JSON text, which every agent can read.

use std::time::Duration;

use serde_json::{Value, json};

use crate::outbound::{Outbound, OutboundError};

/// An answer larger than this is refused (a task carries its artifacts and history).
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Which A2A protocol an agent speaks, from its card's protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V1_0,
    V0_3,
}

impl Protocol {
    /// 0.x versions speak 0.3's JSON-RPC; everything else (1.0 and unknown) 1.0's.
    pub fn of(version: Option<&str>) -> Protocol {
        match version {
            Some(v) if v.starts_with("0.") => Protocol::V0_3,
            _ => Protocol::V1_0,
        }
    }

    /// As stored with a remote task: `1.0` or `0.3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V1_0 => "1.0",
            Protocol::V0_3 => "0.3",
        }
    }

    fn method(self, m: Method) -> &'static str {
        match (self, m) {
            (Protocol::V1_0, Method::Send) => "SendMessage",
            (Protocol::V1_0, Method::Get) => "GetTask",
            (Protocol::V1_0, Method::Cancel) => "CancelTask",
            (Protocol::V0_3, Method::Send) => "message/send",
            (Protocol::V0_3, Method::Get) => "tasks/get",
            (Protocol::V0_3, Method::Cancel) => "tasks/cancel",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Send,
    Get,
    Cancel,
}

/// A remote task's state, in both protocols' vocabularies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    Submitted,
    Working,
    InputRequired,
    AuthRequired,
    Completed,
    Failed,
    Canceled,
    Rejected,
    Unknown,
}

impl RemoteState {
    /// `TASK_STATE_COMPLETED` (1.0) or `completed` (0.3), and so on.
    pub fn parse(s: &str) -> RemoteState {
        let s = s.strip_prefix("TASK_STATE_").unwrap_or(s);
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "submitted" => RemoteState::Submitted,
            "working" => RemoteState::Working,
            "input-required" => RemoteState::InputRequired,
            "auth-required" => RemoteState::AuthRequired,
            "completed" => RemoteState::Completed,
            // 1.0 calls a failure `TASK_STATE_FAILED`; the SDK reports an agent's crash so.
            "failed" | "error" => RemoteState::Failed,
            "canceled" | "cancelled" => RemoteState::Canceled,
            "rejected" => RemoteState::Rejected,
            _ => RemoteState::Unknown,
        }
    }

    /// As memesh reports it (0.3's names, which read as words).
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteState::Submitted => "submitted",
            RemoteState::Working => "working",
            RemoteState::InputRequired => "input-required",
            RemoteState::AuthRequired => "auth-required",
            RemoteState::Completed => "completed",
            RemoteState::Failed => "failed",
            RemoteState::Canceled => "canceled",
            RemoteState::Rejected => "rejected",
            RemoteState::Unknown => "unknown",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RemoteState::Completed
                | RemoteState::Failed
                | RemoteState::Canceled
                | RemoteState::Rejected
        )
    }
}

/// What the agent said about a task.
#[derive(Debug, Clone)]
pub struct RemoteTask {
    /// `None` when the agent answered a message directly instead of creating a task (such an
    /// answer is complete).
    pub id: Option<String>,
    pub context_id: Option<String>,
    pub state: RemoteState,
    /// The state as the agent spelled it.
    pub raw_state: String,
    /// The task's artifacts (or the direct answer message), as the agent sent them.
    pub output: Value,
}

/// Why a call to an agent gave no task.
#[derive(Debug, thiserror::Error)]
pub enum A2aError {
    #[error(transparent)]
    Transport(#[from] OutboundError),
    #[error("the agent answered JSON-RPC error {code}: {message}")]
    Rpc { code: i64, message: String },
    #[error("the agent's answer is not an A2A task or message: {0}")]
    Malformed(&'static str),
}

impl A2aError {
    /// A timeout or a transport failure, worth retrying (not a refusal by the agent).
    pub fn is_transient(&self) -> bool {
        match self {
            A2aError::Transport(OutboundError::Status { status, .. }) => *status >= 500,
            A2aError::Transport(OutboundError::Deadline { .. } | OutboundError::Request(_)) => true,
            _ => false,
        }
    }
}

/// One agent's JSON-RPC endpoint in its protocol.
pub struct A2aClient<'a> {
    pub outbound: &'a Outbound,
    pub endpoint: &'a str,
    pub protocol: Protocol,
    pub deadline: Duration,
}

impl A2aClient<'_> {
    /// Sends `input` as a new message (`message_id` lets a retried send be recognised) and asks
    /// for an answer at once: the task as it stands, not its end.
    pub async fn send(&self, message_id: &str, input: &Value) -> Result<RemoteTask, A2aError> {
        let text = match input {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let params = match self.protocol {
            Protocol::V1_0 => json!({
                "message": { "messageId": message_id, "role": "ROLE_USER", "parts": [{ "text": text }] },
                "configuration": { "returnImmediately": true },
            }),
            Protocol::V0_3 => json!({
                "message": {
                    "kind": "message", "messageId": message_id, "role": "user",
                    "parts": [{ "kind": "text", "text": text }],
                },
                "configuration": { "blocking": false },
            }),
        };
        let result = self.call(Method::Send, params).await?;
        // 1.0 wraps the answer: {"task": …} or {"message": …}; 0.3 tags it with `kind`.
        let (task, message) = match self.protocol {
            Protocol::V1_0 => (result.get("task"), result.get("message")),
            Protocol::V0_3 => match result.get("kind").and_then(Value::as_str) {
                Some("task") => (Some(&result), None),
                Some("message") => (None, Some(&result)),
                _ => (None, None),
            },
        };
        match (task, message) {
            (Some(task), _) => parse_task(task),
            (None, Some(message)) => Ok(RemoteTask {
                id: None,
                context_id: message
                    .get("contextId")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                state: RemoteState::Completed,
                raw_state: "message".into(),
                output: message.clone(),
            }),
            (None, None) => Err(A2aError::Malformed(
                "its result is neither a task nor a message",
            )),
        }
    }

    /// The task as the agent has it now.
    pub async fn get(&self, task_id: &str) -> Result<RemoteTask, A2aError> {
        let result = self.call(Method::Get, json!({ "id": task_id })).await?;
        parse_task(&result)
    }

    /// Asks the agent to cancel the task; its answer says where the task is now.
    pub async fn cancel(&self, task_id: &str) -> Result<RemoteTask, A2aError> {
        let result = self.call(Method::Cancel, json!({ "id": task_id })).await?;
        parse_task(&result)
    }

    async fn call(&self, method: Method, params: Value) -> Result<Value, A2aError> {
        let body = json!({
            "jsonrpc": "2.0",
            "id": uuid::Uuid::now_v7().to_string(),
            "method": self.protocol.method(method),
            "params": params,
        });
        let headers: &[(&str, &str)] = match self.protocol {
            Protocol::V1_0 => &[("A2A-Version", "1.0")],
            Protocol::V0_3 => &[],
        };
        let answer = self
            .outbound
            .post_json(
                self.endpoint,
                &body,
                headers,
                MAX_ANSWER_BYTES,
                self.deadline,
            )
            .await?;
        if let Some(error) = answer.get("error") {
            return Err(A2aError::Rpc {
                code: error.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: sanitized(
                    error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("(no message)"),
                ),
            });
        }
        answer.get("result").cloned().ok_or(A2aError::Malformed(
            "it is not a JSON-RPC answer with a result",
        ))
    }
}

/// A task in either protocol's shape.
fn parse_task(task: &Value) -> Result<RemoteTask, A2aError> {
    let id = task
        .get("id")
        .and_then(Value::as_str)
        .ok_or(A2aError::Malformed("its task has no id"))?;
    let raw_state = task
        .pointer("/status/state")
        .and_then(Value::as_str)
        .ok_or(A2aError::Malformed("its task has no status.state"))?;
    Ok(RemoteTask {
        id: Some(id.to_owned()),
        context_id: task
            .get("contextId")
            .and_then(Value::as_str)
            .map(str::to_owned),
        state: RemoteState::parse(raw_state),
        raw_state: raw_state.to_owned(),
        output: task.get("artifacts").cloned().unwrap_or(Value::Null),
    })
}

/// Longest part of an agent's JSON-RPC error message kept in a run's view.
const MAX_RPC_MESSAGE_CHARS: usize = 120;

/// An agent's error message as a run's view shows it: printable characters only, cut short.
/// What a peer that is not an A2A agent answered is never quoted (a status and a fixed reason
/// are), so the guard cannot be used to read another service's answers through run views.
fn sanitized(message: &str) -> String {
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_RPC_MESSAGE_CHARS + 1)
        .collect();
    if clean.chars().count() > MAX_RPC_MESSAGE_CHARS {
        let cut: String = clean.chars().take(MAX_RPC_MESSAGE_CHARS).collect();
        format!("{cut}…")
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_of_both_protocols_map_to_one() {
        for (raw, state) in [
            ("TASK_STATE_SUBMITTED", RemoteState::Submitted),
            ("submitted", RemoteState::Submitted),
            ("TASK_STATE_WORKING", RemoteState::Working),
            ("TASK_STATE_INPUT_REQUIRED", RemoteState::InputRequired),
            ("input-required", RemoteState::InputRequired),
            ("TASK_STATE_AUTH_REQUIRED", RemoteState::AuthRequired),
            ("auth-required", RemoteState::AuthRequired),
            ("TASK_STATE_COMPLETED", RemoteState::Completed),
            ("completed", RemoteState::Completed),
            ("TASK_STATE_FAILED", RemoteState::Failed),
            ("TASK_STATE_CANCELED", RemoteState::Canceled),
            ("canceled", RemoteState::Canceled),
            ("TASK_STATE_REJECTED", RemoteState::Rejected),
            ("TASK_STATE_UNSPECIFIED", RemoteState::Unknown),
            ("whatever", RemoteState::Unknown),
        ] {
            assert_eq!(RemoteState::parse(raw), state, "{raw}");
        }
        assert!(RemoteState::Completed.is_terminal());
        assert!(RemoteState::Rejected.is_terminal());
        assert!(!RemoteState::InputRequired.is_terminal());
        assert!(!RemoteState::Unknown.is_terminal());
    }

    #[test]
    fn protocol_versions() {
        assert_eq!(Protocol::of(Some("0.3.0")), Protocol::V0_3);
        assert_eq!(Protocol::of(Some("0.2.5")), Protocol::V0_3);
        assert_eq!(Protocol::of(Some("1.0")), Protocol::V1_0);
        assert_eq!(Protocol::of(None), Protocol::V1_0);
    }

    #[test]
    fn tasks_of_both_shapes_parse() {
        let v1 = json!({ "id": "t1", "contextId": "c1",
            "status": { "state": "TASK_STATE_COMPLETED" },
            "artifacts": [{ "parts": [{ "text": "done" }] }] });
        let t = parse_task(&v1).unwrap();
        assert_eq!(
            (t.id.as_deref(), t.context_id.as_deref(), t.state),
            (Some("t1"), Some("c1"), RemoteState::Completed)
        );
        assert_eq!(t.output[0]["parts"][0]["text"], "done");
        let v03 = json!({ "kind": "task", "id": "t2", "contextId": "c2", "status": { "state": "working" } });
        assert_eq!(parse_task(&v03).unwrap().state, RemoteState::Working);
        assert!(matches!(
            parse_task(&json!({ "status": { "state": "working" } })),
            Err(A2aError::Malformed(_))
        ));
        assert!(matches!(
            parse_task(&json!({ "id": "x" })),
            Err(A2aError::Malformed(_))
        ));
    }
}
