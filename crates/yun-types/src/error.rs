use std::fmt;

/// Every error a caller can be shown. One row per code: the CloudBase string code the
/// official SDKs read from the envelope, and the HTTP status the management API returns.
/// Tests assert these codes, never the prose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A parameter is missing, malformed or out of range.
    InvalidParam,
    /// The `/admin` action is not one Yun serves.
    InvalidAction,
    /// The request body is larger than the surface accepts.
    PayloadTooLarge,
    /// The Authorization header or its parts are missing or malformed.
    SignParamInvalid,
    /// The signature timestamp is outside its validity window.
    SignExpired,
    /// The signature does not match the request.
    SignInvalid,
    /// The SecretId is unknown, revoked or expired.
    InvalidSecretId,
    /// No such env.
    InvalidEnv,
    /// The caller is authenticated but may not do this (e.g. another env's key).
    PermissionDenied,
    /// No such function.
    FunctionNotFound,
    /// The function's code is invalid (archive, package, missing `main`).
    FunctionCodeInvalid,
    /// The function ran and failed: threw, crashed, timed out, ran out of memory.
    FunctionExecuteFail,
    /// Too many concurrent invocations of one function: the queue wait ran out.
    ConcurrencyLimit,
    /// The named thing (env, key, log) does not exist.
    NotFound,
    /// The thing already exists.
    AlreadyExists,
    /// A query or update uses an operator Yun does not know, or in the wrong place.
    DatabaseInvalidOperator,
    /// The collection does not exist.
    CollectionNotFound,
    /// The collection already exists.
    CollectionExists,
    /// A transaction's documents changed under it; the SDK's `runTransaction` retries.
    TransactionConflict,
    /// A query over its time or memory bound (the message says which, and the fix).
    DatabaseQueryLimit,
    /// An end user's database call that the collection's security rules do not allow.
    DatabasePermissionDenied,
    /// A write would duplicate an `_id` or a unique index key.
    DuplicateKey,
    /// No file at that path (or file id).
    StorageFileNotFound,
    /// A storage URL's or upload's signature is wrong or expired.
    StorageSignInvalid,
    /// The upload would pass the env's storage quota.
    StorageQuotaExceeded,
    /// The file belongs to another env (or the caller may not touch it).
    StorageForbidden,
    /// An image operation on a file that is not an image Yun can decode.
    UnsupportedImage,
    /// No valid end-user credentials: a missing, malformed or revoked access token.
    Unauthenticated,
    /// The access token's time is up; the SDKs refresh and retry on this code.
    AccessTokenExpired,
    /// A wrong username or password, or a refresh token that is not valid.
    InvalidCredentials,
    /// A service Yun depends on (the event bus, the object store) did not answer; the
    /// message says which and whether anything was done. Worth retrying later.
    Unavailable,
    /// A fault inside Yun; details are in the server log, not the response.
    Internal,
}

impl ErrorCode {
    /// The string code the CloudBase SDKs read (`TcbError.code`, wx-server-sdk's errCode map).
    pub fn cloudbase(self) -> &'static str {
        match self {
            Self::InvalidParam | Self::PayloadTooLarge | Self::FunctionCodeInvalid => {
                "INVALID_PARAM"
            }
            Self::InvalidAction => "INVALID_ACTION",
            Self::SignParamInvalid => "SIGN_PARAM_INVALID",
            Self::SignExpired => "SIGN_EXPIRED_ERROR",
            Self::SignInvalid => "SIGN_INVALID_ERROR",
            Self::InvalidSecretId => "INVALID_SECRET_ID",
            // The misspelling is CloudBase's own; the SDKs match on it.
            Self::InvalidEnv => "INVALIID_ENV",
            Self::PermissionDenied => "PERMISSION_DENIED",
            Self::FunctionNotFound => "FUNCTION_NOT_FOUND",
            Self::FunctionExecuteFail => "FUNCTIONS_EXECUTE_FAIL",
            Self::ConcurrencyLimit => "EXCEED_CONCURRENT_REQUEST_LIMIT",
            Self::NotFound => "RESOURCE_NOT_FOUND",
            Self::AlreadyExists => "RESOURCE_ALREADY_EXISTS",
            // Misspelled as CloudBase spells it.
            Self::DatabaseInvalidOperator => "DATABASE_INVALID_OPERRATOR",
            Self::CollectionNotFound => "DATABASE_COLLECTION_NOT_EXIST",
            Self::CollectionExists => "DATABASE_COLLECTION_ALREADY_EXIST",
            Self::TransactionConflict => "DATABASE_TRANSACTION_CONFLICT",
            Self::DatabaseQueryLimit => "DATABASE_REQUEST_FAILED",
            Self::DatabasePermissionDenied => "DATABASE_PERMISSION_DENIED",
            // CloudBase documents no dedicated duplicate-key code; its generic database
            // error carries MongoDB's "E11000 duplicate key" message.
            Self::DuplicateKey => "DATABASE_REQUEST_FAILED",
            Self::StorageFileNotFound => "STORAGE_FILE_NONEXIST",
            Self::StorageSignInvalid => "STORAGE_SIGN_PARAM_INVALID",
            Self::StorageQuotaExceeded => "STORAGE_REQUEST_FAIL",
            Self::StorageForbidden => "STORAGE_EXCEED_AUTHORITY",
            // Image processing is COS's (Cloud Infinite), which answers in HTTP alone; the
            // SDKs never see this code.
            Self::UnsupportedImage => "STORAGE_IMAGE_UNSUPPORTED",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::AccessTokenExpired => "ACCESS_TOKEN_EXPIRED",
            Self::InvalidCredentials => "INVALID_CREDENTIALS",
            Self::Unavailable => "SERVICE_UNAVAILABLE",
            Self::Internal => "SYS_ERR",
        }
    }

    /// The HTTP status of the management API and HTTP-function surfaces.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidParam | Self::InvalidAction | Self::FunctionCodeInvalid => 400,
            Self::DatabaseInvalidOperator | Self::DatabaseQueryLimit => 400,
            Self::CollectionNotFound => 404,
            Self::CollectionExists | Self::TransactionConflict | Self::DuplicateKey => 409,
            Self::SignParamInvalid | Self::SignExpired | Self::SignInvalid => 401,
            Self::InvalidSecretId => 401,
            Self::PermissionDenied | Self::DatabasePermissionDenied => 403,
            Self::InvalidEnv | Self::FunctionNotFound | Self::NotFound => 404,
            Self::AlreadyExists => 409,
            Self::PayloadTooLarge => 413,
            Self::ConcurrencyLimit => 429,
            Self::FunctionExecuteFail => 502,
            Self::StorageFileNotFound => 404,
            Self::StorageSignInvalid => 403,
            Self::StorageQuotaExceeded => 413,
            Self::StorageForbidden => 403,
            Self::UnsupportedImage => 415,
            Self::Unauthenticated | Self::AccessTokenExpired | Self::InvalidCredentials => 401,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.cloudbase())
    }
}

/// An error meant for a caller: a code from the table and a message safe to show.
/// Internal faults are logged where they happen and reach callers as [`ErrorCode::Internal`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct YunError {
    pub code: ErrorCode,
    pub message: String,
}

impl YunError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParam, message)
    }

    /// Logs the real cause with its chain and returns the generic error callers see.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(cause = %cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error, see the server log")
    }
}
