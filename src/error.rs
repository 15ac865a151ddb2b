//! The one API error type: every error code the server can answer with, its HTTP status, and the
//! JSON body `{"error":{"code","message","details?"}}` that every non-2xx response carries.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Every machine-readable error code. The status of each is decided in [`Code::status`], with no
/// catch-all arm, so a new code cannot ship without a deliberate status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    MalformedJson,
    MissingField,
    UnknownField,
    InvalidField,
    UnsupportedMediaType,
    PayloadTooLarge,
    UriTooLong,
    HeadersTooLarge,
    Unauthorized,
    KeyExpired,
    InsufficientRole,
    InsufficientScope,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    RequestTimeout,
    AlreadyMember,
    InvitationPending,
    InvitationUsed,
    InvitationExpired,
    InvitationRevoked,
    LastOwner,
    KeyExists,
    InvalidAgentCard,
    AgentCardUnreachable,
    StaleRuntimeSnapshot,
    StalePolicyEpoch,
    StaleIncidentEpoch,
    SelfReviewBlocked,
    AgentKeyForbidden,
    TargetNameTaken,
    TargetAlreadyHeld,
    TargetNotHeld,
    IncidentAlreadyOpen,
    NoOpenIncident,
    NothingToReview,
    TargetHasActiveRuns,
    TargetBlocked,
    MemoryIdTaken,
    IdempotencyKeyReused,
    InvalidRunState,
    ApprovalDecided,
    AgentKeyRequired,
    DuplicateClaim,
    LeaseLost,
    ExecutionNotClaimable,
    CancelNotRequested,
    CancelNotRetryable,
    RemoteRecoveryNotExhausted,
    QuotaExceeded,
    RateLimited,
    Overloaded,
    Internal,
    Unavailable,
}

impl Code {
    /// Every code (the OpenAPI document lists them; `every_code_is_listed` keeps it whole).
    pub const ALL: &'static [Code] = &[
        Code::MalformedJson,
        Code::MissingField,
        Code::UnknownField,
        Code::InvalidField,
        Code::UnsupportedMediaType,
        Code::PayloadTooLarge,
        Code::UriTooLong,
        Code::HeadersTooLarge,
        Code::Unauthorized,
        Code::KeyExpired,
        Code::InsufficientRole,
        Code::InsufficientScope,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::NotAcceptable,
        Code::RequestTimeout,
        Code::AlreadyMember,
        Code::InvitationPending,
        Code::InvitationUsed,
        Code::InvitationExpired,
        Code::InvitationRevoked,
        Code::LastOwner,
        Code::KeyExists,
        Code::InvalidAgentCard,
        Code::AgentCardUnreachable,
        Code::StaleRuntimeSnapshot,
        Code::StalePolicyEpoch,
        Code::StaleIncidentEpoch,
        Code::SelfReviewBlocked,
        Code::AgentKeyForbidden,
        Code::TargetNameTaken,
        Code::TargetAlreadyHeld,
        Code::TargetNotHeld,
        Code::IncidentAlreadyOpen,
        Code::NoOpenIncident,
        Code::NothingToReview,
        Code::TargetHasActiveRuns,
        Code::TargetBlocked,
        Code::MemoryIdTaken,
        Code::IdempotencyKeyReused,
        Code::InvalidRunState,
        Code::ApprovalDecided,
        Code::AgentKeyRequired,
        Code::DuplicateClaim,
        Code::LeaseLost,
        Code::ExecutionNotClaimable,
        Code::CancelNotRequested,
        Code::CancelNotRetryable,
        Code::RemoteRecoveryNotExhausted,
        Code::QuotaExceeded,
        Code::RateLimited,
        Code::Overloaded,
        Code::Internal,
        Code::Unavailable,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Code::MalformedJson
            | Code::MissingField
            | Code::UnknownField
            | Code::InvalidField
            | Code::InvalidAgentCard
            | Code::AgentCardUnreachable => StatusCode::BAD_REQUEST,
            Code::SelfReviewBlocked | Code::AgentKeyForbidden | Code::AgentKeyRequired => {
                StatusCode::FORBIDDEN
            }
            Code::IdempotencyKeyReused
            | Code::InvalidRunState
            | Code::ApprovalDecided
            | Code::DuplicateClaim
            | Code::LeaseLost
            | Code::ExecutionNotClaimable
            | Code::CancelNotRequested
            | Code::CancelNotRetryable
            | Code::RemoteRecoveryNotExhausted => StatusCode::CONFLICT,
            Code::StaleRuntimeSnapshot
            | Code::StalePolicyEpoch
            | Code::StaleIncidentEpoch
            | Code::TargetNameTaken
            | Code::TargetAlreadyHeld
            | Code::TargetNotHeld
            | Code::IncidentAlreadyOpen
            | Code::NoOpenIncident
            | Code::NothingToReview
            | Code::TargetHasActiveRuns
            | Code::TargetBlocked
            | Code::MemoryIdTaken => StatusCode::CONFLICT,
            Code::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Code::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::UriTooLong => StatusCode::URI_TOO_LONG,
            Code::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Code::Unauthorized | Code::KeyExpired => StatusCode::UNAUTHORIZED,
            Code::InsufficientRole | Code::InsufficientScope | Code::QuotaExceeded => {
                StatusCode::FORBIDDEN
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::AlreadyMember
            | Code::InvitationPending
            | Code::InvitationUsed
            | Code::LastOwner
            | Code::KeyExists => StatusCode::CONFLICT,
            Code::InvitationExpired | Code::InvitationRevoked => StatusCode::GONE,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable | Code::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::MalformedJson => "malformed_json",
            Code::MissingField => "missing_field",
            Code::UnknownField => "unknown_field",
            Code::InvalidField => "invalid_field",
            Code::UnsupportedMediaType => "unsupported_media_type",
            Code::PayloadTooLarge => "payload_too_large",
            Code::UriTooLong => "uri_too_long",
            Code::HeadersTooLarge => "headers_too_large",
            Code::Unauthorized => "unauthorized",
            Code::KeyExpired => "key_expired",
            Code::InsufficientRole => "insufficient_role",
            Code::InsufficientScope => "insufficient_scope",
            Code::NotFound => "not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::NotAcceptable => "not_acceptable",
            Code::RequestTimeout => "request_timeout",
            Code::AlreadyMember => "already_member",
            Code::InvitationPending => "invitation_pending",
            Code::InvitationUsed => "invitation_used",
            Code::InvitationExpired => "invitation_expired",
            Code::InvitationRevoked => "invitation_revoked",
            Code::LastOwner => "last_owner",
            Code::KeyExists => "key_exists",
            Code::InvalidAgentCard => "invalid_agent_card",
            Code::AgentCardUnreachable => "agent_card_unreachable",
            Code::StaleRuntimeSnapshot => "stale_runtime_snapshot",
            Code::StalePolicyEpoch => "stale_policy_epoch",
            Code::StaleIncidentEpoch => "stale_incident_epoch",
            Code::SelfReviewBlocked => "self_review_blocked",
            Code::AgentKeyForbidden => "agent_key_forbidden",
            Code::TargetNameTaken => "target_name_taken",
            Code::TargetAlreadyHeld => "target_already_held",
            Code::TargetNotHeld => "target_not_held",
            Code::IncidentAlreadyOpen => "incident_already_open",
            Code::NoOpenIncident => "no_open_incident",
            Code::NothingToReview => "nothing_to_review",
            Code::TargetHasActiveRuns => "target_has_active_runs",
            Code::TargetBlocked => "target_blocked",
            Code::MemoryIdTaken => "memory_id_taken",
            Code::IdempotencyKeyReused => "idempotency_key_reused",
            Code::InvalidRunState => "invalid_run_state",
            Code::ApprovalDecided => "approval_already_decided",
            Code::AgentKeyRequired => "agent_key_required",
            Code::DuplicateClaim => "duplicate_claim",
            Code::LeaseLost => "lease_lost",
            Code::ExecutionNotClaimable => "execution_not_claimable",
            Code::CancelNotRequested => "cancel_not_requested",
            Code::CancelNotRetryable => "cancel_not_retryable",
            Code::RemoteRecoveryNotExhausted => "remote_recovery_not_exhausted",
            Code::QuotaExceeded => "quota_exceeded",
            Code::RateLimited => "rate_limited",
            Code::Internal => "internal_error",
            Code::Unavailable => "unavailable",
            Code::Overloaded => "overloaded",
        }
    }

    /// The code a bare status from a layer outside the handlers (routing, timeouts, body limits)
    /// stands for, so those responses get the same JSON body as everything else.
    pub fn for_status(status: StatusCode) -> Code {
        match status {
            StatusCode::NOT_FOUND => Code::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Code::MethodNotAllowed,
            StatusCode::NOT_ACCEPTABLE => Code::NotAcceptable,
            StatusCode::REQUEST_TIMEOUT => Code::RequestTimeout,
            StatusCode::PAYLOAD_TOO_LARGE => Code::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::UnsupportedMediaType,
            StatusCode::UNAUTHORIZED => Code::Unauthorized,
            StatusCode::TOO_MANY_REQUESTS => Code::RateLimited,
            StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
            s if s.is_client_error() => Code::InvalidField,
            _ => Code::Internal,
        }
    }
}

/// An error answered to a client. Internal causes are logged, never sent.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub details: Option<Value>,
    source: Option<anyhow::Error>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            details: None,
            source: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// A 400 naming the offending field, in the message and in `details.field`.
    pub fn field(field: &str, problem: impl std::fmt::Display) -> Self {
        ApiError::new(Code::InvalidField, format!("{field}: {problem}"))
            .with_details(json!({ "field": field }))
    }

    /// 403 `quota_exceeded` for one of the plan's quotas (`None` for a name that is not one).
    pub fn quota_exceeded(quota: &str) -> Option<Self> {
        let (name, what) = QUOTAS.iter().find(|(n, _)| *n == quota)?;
        Some(
            ApiError::new(
                Code::QuotaExceeded,
                format!("the plan's limit of {what} is reached; delete something or move to a larger plan (GET /v1/usage/summary)"),
            )
            .with_details(json!({ "quota": name })),
        )
    }

    pub fn not_found(what: &str) -> Self {
        ApiError::new(Code::NotFound, format!("{what} not found"))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(Code::Unauthorized, message)
    }

    /// The `{"code","message","details?"}` object of the error body: what a response carries
    /// under `error`, and what batch items, import reports and stream events carry too. An
    /// internal cause is logged here, since it is about to leave the server without it.
    pub fn error_object(&self) -> Value {
        self.log_source();
        error_object(self.code, &self.message, self.details.as_ref())
    }

    /// The whole error body, `{"error": {...}}`.
    pub fn body(&self) -> Value {
        json!({ "error": self.error_object() })
    }

    fn log_source(&self) {
        if let Some(source) = &self.source {
            tracing::error!(code = self.code.as_str(), error = %format!("{source:#}"), "request failed");
        }
    }

    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        ApiError {
            code: Code::Internal,
            message: "internal error; see the server log".into(),
            details: None,
            source: Some(source.into()),
        }
    }
}

/// The quotas the database enforces (migration 12's triggers abort with
/// `quota_exceeded:<quota>`), and what each says.
const QUOTAS: &[(&str, &str)] = &[
    ("memories_per_user", "memories per member"),
    ("bytes_per_tenant", "bytes of memories in the workspace"),
    ("keys_per_user", "live API keys per member"),
    ("targets_per_tenant", "dispatch targets in the workspace"),
    ("seats", "seats (members and open invitations)"),
    ("runs_waiting", "runs waiting in the workspace"),
];

impl From<rusqlite::Error> for ApiError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(_, Some(msg)) = &e
            && let Some(quota) = msg.strip_prefix("quota_exceeded:")
            && let Some(error) = ApiError::quota_exceeded(quota)
        {
            return error;
        }
        ApiError::internal(e)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)?;
        if let Some(source) = &self.source {
            write!(f, " ({source:#})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The JSON error body for `code`, used by handlers and by the fallback for bare statuses.
pub fn error_body(code: Code, message: &str, details: Option<&Value>) -> Value {
    json!({ "error": error_object(code, message, details) })
}

fn error_object(code: Code, message: &str, details: Option<&Value>) -> Value {
    let mut error = json!({ "code": code.as_str(), "message": message });
    if let Some(details) = details {
        error["details"] = details.clone();
    }
    error
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        if matches!(self.code, Code::Unauthorized | Code::KeyExpired) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"memesh\""),
            );
        }
        if self.code == Code::RateLimited
            && let Some(d) = &self.details
        {
            for (name, field) in [
                ("ratelimit-limit", "limit"),
                ("ratelimit-remaining", "remaining"),
                ("ratelimit-reset", "resetSeconds"),
            ] {
                if let Some(v) = d.get(field).and_then(Value::as_u64)
                    && let Ok(v) = HeaderValue::from_str(&v.to_string())
                {
                    response.headers_mut().insert(name, v);
                }
            }
        }
        if matches!(self.code, Code::RateLimited | Code::Overloaded) {
            let retry = self
                .details
                .as_ref()
                .and_then(|d| d.get("retryAfterSeconds"))
                .and_then(Value::as_u64)
                .unwrap_or(1);
            if let Ok(value) = HeaderValue::from_str(&retry.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod code_tests {
    use super::Code;

    /// A new code must be added to `Code::ALL` too: this match is exhaustive, so a new variant
    /// does not compile until it has an index here, and the index must be its place in `ALL`.
    fn index(c: Code) -> usize {
        match c {
            Code::MalformedJson => 0,
            Code::MissingField => 1,
            Code::UnknownField => 2,
            Code::InvalidField => 3,
            Code::UnsupportedMediaType => 4,
            Code::PayloadTooLarge => 5,
            Code::UriTooLong => 6,
            Code::HeadersTooLarge => 7,
            Code::Unauthorized => 8,
            Code::KeyExpired => 9,
            Code::InsufficientRole => 10,
            Code::InsufficientScope => 11,
            Code::NotFound => 12,
            Code::MethodNotAllowed => 13,
            Code::NotAcceptable => 14,
            Code::RequestTimeout => 15,
            Code::AlreadyMember => 16,
            Code::InvitationPending => 17,
            Code::InvitationUsed => 18,
            Code::InvitationExpired => 19,
            Code::InvitationRevoked => 20,
            Code::LastOwner => 21,
            Code::KeyExists => 22,
            Code::InvalidAgentCard => 23,
            Code::AgentCardUnreachable => 24,
            Code::StaleRuntimeSnapshot => 25,
            Code::StalePolicyEpoch => 26,
            Code::StaleIncidentEpoch => 27,
            Code::SelfReviewBlocked => 28,
            Code::AgentKeyForbidden => 29,
            Code::TargetNameTaken => 30,
            Code::TargetAlreadyHeld => 31,
            Code::TargetNotHeld => 32,
            Code::IncidentAlreadyOpen => 33,
            Code::NoOpenIncident => 34,
            Code::NothingToReview => 35,
            Code::TargetHasActiveRuns => 36,
            Code::TargetBlocked => 37,
            Code::MemoryIdTaken => 38,
            Code::IdempotencyKeyReused => 39,
            Code::InvalidRunState => 40,
            Code::ApprovalDecided => 41,
            Code::AgentKeyRequired => 42,
            Code::DuplicateClaim => 43,
            Code::LeaseLost => 44,
            Code::ExecutionNotClaimable => 45,
            Code::CancelNotRequested => 46,
            Code::CancelNotRetryable => 47,
            Code::RemoteRecoveryNotExhausted => 48,
            Code::QuotaExceeded => 49,
            Code::RateLimited => 50,
            Code::Overloaded => 51,
            Code::Internal => 52,
            Code::Unavailable => 53,
        }
    }

    #[test]
    fn every_code_is_listed() {
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(index(*c), i, "{}", c.as_str());
        }
        assert_eq!(Code::ALL.len(), index(Code::Unavailable) + 1);
    }
}
