//! The one error type of the core, and its mapping to gRPC status codes (one table, here).
use tonic::{Code, Status};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The model name is not known to the server.
    #[error("Servable not found for request: model '{model}' is not served here; served models: [{known}]")]
    ModelNotFound { model: String, known: String },
    /// The model exists but not that version.
    #[error("Servable not found for request: model '{model}' has no version {version}; its versions: [{known}]")]
    VersionNotFound { model: String, version: i64, known: String },
    /// Something else the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The model/version exists but cannot take requests now (loading, failed, unloading).
    #[error("{0}")]
    Unavailable(String),
    /// A request that can never succeed as sent (bad tensors, unknown inputs, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request names something the server does not have in that state (e.g. a signature).
    #[error("{0}")]
    FailedPrecondition(String),
    /// An RPC or feature this server does not offer.
    #[error("{0}")]
    Unimplemented(String),
    /// The client's deadline passed before the work could be done.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A limit was hit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A request larger than the server takes (`--max-tensor-bytes`): RESOURCE_EXHAUSTED, HTTP 413.
    #[error("{0}")]
    TooLarge(String),
    /// ONNX Runtime failed while running a model.
    #[error("model '{model}' version {version}: ONNX Runtime failed to run: {message}")]
    Runtime { model: String, version: i64, message: String, invalid_input: bool },
    /// Missing, unknown, malformed, expired or revoked credentials (one message for every case).
    #[error("missing or invalid credentials")]
    Unauthenticated,
    /// An identified caller asked for something its role does not allow (names the API).
    #[error("{0}")]
    PermissionDenied(String),
    /// A tenant's rate or rows limit: RESOURCE_EXHAUSTED with `RetryInfo` and `QuotaFailure`
    /// details, HTTP 429 with `Retry-After`.
    #[error("{message}")]
    RateLimited { limit: &'static str, message: String, retry_after: std::time::Duration },
    /// A bug or an unexpected failure of the server itself.
    #[error("internal error: {0}")]
    Internal(String),
}

/// gRPC messages longer than this are cut (as TF Serving does), so a pathological input cannot
/// produce a multi-megabyte status header.
const MAX_MESSAGE_CHARS: usize = 4096;

impl Error {
    pub fn code(&self) -> Code {
        match self {
            Error::ModelNotFound { .. } | Error::VersionNotFound { .. } | Error::NotFound(_) => Code::NotFound,
            Error::Unavailable(_) => Code::Unavailable,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::ResourceExhausted(_) | Error::TooLarge(_) | Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::Unauthenticated => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Runtime { invalid_input: true, .. } => Code::InvalidArgument,
            Error::Runtime { .. } | Error::Internal(_) => Code::Internal,
        }
    }

    /// The HTTP status of this error on the REST front ends (TF Serving's table, from the gRPC code).
    pub fn http_status(&self) -> u16 {
        if let Error::TooLarge(_) = self {
            return 413;
        }
        match self.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::NotFound => 404,
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::DeadlineExceeded => 504,
            _ => 500,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let mut msg = e.to_string();
        if msg.len() > MAX_MESSAGE_CHARS {
            let mut cut = MAX_MESSAGE_CHARS;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push_str("...TRUNCATED");
        }
        if let Error::RateLimited { limit, retry_after, .. } = &e {
            use tonic_types::{ErrorDetails, StatusExt};
            let mut details = ErrorDetails::with_retry_info(Some(*retry_after));
            details.add_quota_failure_violation(*limit, msg.clone());
            return Status::with_error_details(e.code(), msg, details);
        }
        Status::new(e.code(), msg)
    }
}

/// The canonical name of a gRPC status code (`NOT_FOUND`).
pub fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_and_truncates() {
        let s: Status = Error::InvalidArgument("x".repeat(10_000)).into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().ends_with("...TRUNCATED"));
        assert_eq!(s.message().len(), MAX_MESSAGE_CHARS + "...TRUNCATED".len());
        let s: Status = Error::ModelNotFound { model: "m".into(), known: "a, b".into() }.into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "Servable not found for request: model 'm' is not served here; served models: [a, b]");
        assert_eq!(Error::InvalidArgument(String::new()).http_status(), 400);
        assert_eq!(Error::FailedPrecondition(String::new()).http_status(), 400);
        assert_eq!(Error::NotFound(String::new()).http_status(), 404);
        assert_eq!(Error::ResourceExhausted(String::new()).http_status(), 429);
        assert_eq!(Error::TooLarge(String::new()).http_status(), 413);
        assert_eq!(Error::TooLarge(String::new()).code(), Code::ResourceExhausted);
        assert_eq!(Error::Unimplemented(String::new()).http_status(), 501);
        assert_eq!(Error::Unavailable(String::new()).http_status(), 503);
        assert_eq!(Error::Internal(String::new()).http_status(), 500);
    }
}
