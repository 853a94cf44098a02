//! Who is calling: a bearer JWT (RFC 6750) signed with the BFF's key. Its
//! subject is the user every shopper route acts for: the user id is never
//! read from a body or a path. A `role` claim of `operator` opens the
//! operator routes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use commerce_platform::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::problem::{Problem, reason};

/// The role that opens `/api/v1/admin/*` and the console's data.
pub const OPERATOR_ROLE: &str = "operator";

/// Tokens the BFF accepts: HS256 with the shared secret, `exp` required,
/// `iss` and `aud` checked when configured.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
}

/// The claims the BFF reads (and mints for `commerce-bff token`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub iss: String,
    pub aud: String,
    /// `operator` for operators; absent for shoppers.
    #[serde(default, skip_serializing_if = "Roles::is_empty")]
    pub role: Roles,
}

/// `"role": "operator"` or `"role": ["operator", ...]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Roles {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl Roles {
    fn is_empty(&self) -> bool {
        matches!(self, Self::None)
    }

    pub fn has(&self, role: &str) -> bool {
        match self {
            Self::None => false,
            Self::One(one) => one == role,
            Self::Many(many) => many.iter().any(|r| r == role),
        }
    }
}

/// The shortest secret accepted: HS256 is as strong as its key.
pub const MIN_SECRET_BYTES: usize = 32;

impl Authenticator {
    pub fn new(secret: &[u8], issuer: &str, audience: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "the JWT secret must be at least {MIN_SECRET_BYTES} bytes"
        );
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = 30;
        Ok(Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        })
    }

    /// A token for `subject`, valid for `ttl` (the demo token, the tests'
    /// tokens; production tokens come from the identity provider).
    pub fn mint(&self, subject: &str, role: Option<&str>, ttl: Duration) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub: subject.to_owned(),
            iat: now,
            exp: now + ttl.as_secs(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            role: role.map_or(Roles::None, |r| Roles::One(r.to_owned())),
        };
        self.sign(&claims)
    }

    /// Signs `claims` as they are.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &self.encoding,
        )?)
    }

    /// The verified caller of a request with these headers.
    pub fn caller(&self, parts: &Parts) -> Result<Caller, Problem> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            unauthorized(
                reason::TOKEN_MISSING,
                "an Authorization: Bearer token is required",
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized(
                    reason::TOKEN_INVALID,
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                unauthorized(
                    reason::TOKEN_INVALID,
                    format!("the token is not valid: {e}"),
                )
            })?
            .claims;
        let user = UserId::parse("sub", &claims.sub).map_err(|e| {
            unauthorized(
                reason::TOKEN_INVALID,
                format!("the token's subject is not a user id: {e}"),
            )
        })?;
        Ok(Caller {
            user,
            operator: claims.role.has(OPERATOR_ROLE),
        })
    }
}

fn unauthorized(reason: &str, detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, reason, detail)
}

/// A caller with a valid token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: UserId,
    pub operator: bool,
}

/// The shopper a route acts for: the token's subject.
#[derive(Debug, Clone)]
pub struct Shopper(pub UserId);

impl Shopper {
    pub fn id(&self) -> String {
        self.0.as_str().to_owned()
    }
}

impl FromRequestParts<Arc<AppState>> for Shopper {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let caller = state.auth.caller(parts)?;
        state.users.check(caller.user.as_str())?;
        Ok(Self(caller.user))
    }
}

/// An operator: a valid token with the `operator` role.
#[derive(Debug, Clone)]
pub struct Operator(pub UserId);

impl FromRequestParts<Arc<AppState>> for Operator {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let caller = state.auth.caller(parts)?;
        if !caller.operator {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                reason::ROLE_REQUIRED,
                format!("this route needs the `{OPERATOR_ROLE}` role"),
            ));
        }
        state.users.check(caller.user.as_str())?;
        Ok(Self(caller.user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(token: Option<&str>) -> Parts {
        let mut builder = axum::http::Request::builder();
        if let Some(token) = token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn minted_tokens_verify_and_others_do_not() {
        let auth = Authenticator::new(&[7; 32], "commerce-bff", "commerce").unwrap();
        let token = auth
            .mint("ann", Some("operator"), Duration::from_secs(60))
            .unwrap();
        let caller = auth.caller(&parts(Some(&token))).unwrap();
        assert_eq!(caller.user.as_str(), "ann");
        assert!(caller.operator);

        let other = Authenticator::new(&[8; 32], "commerce-bff", "commerce").unwrap();
        let forged = other.mint("ann", None, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.caller(&parts(Some(&forged))).unwrap_err().status, 401);
        assert_eq!(
            auth.caller(&parts(None)).unwrap_err().reason,
            reason::TOKEN_MISSING
        );
        assert!(Authenticator::new(b"short", "i", "a").is_err());
    }
}
