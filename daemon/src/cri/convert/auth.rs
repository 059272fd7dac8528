//! `AuthConfig` → registry [`Credentials`].

use base64::Engine as _;
use berth_cri::v1::AuthConfig;

use super::invalid;
use crate::error::Result;
use crate::image::Credentials;

/// From the CRI fields: username/password, `auth` (base64 "user:password"), or a
/// registry token. An identity token (OAuth refresh token) is used as a bearer token.
pub fn credentials_from_cri(a: &AuthConfig) -> Result<Credentials> {
    let mut c = Credentials {
        username: a.username.clone(),
        password: a.password.clone(),
        token: if a.registry_token.is_empty() {
            a.identity_token.clone()
        } else {
            a.registry_token.clone()
        },
    };
    if c.username.is_empty() && !a.auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|_| invalid("auth is not valid base64"))?;
        let text = String::from_utf8(raw).map_err(|_| invalid("auth is not UTF-8"))?;
        let (u, p) = text
            .split_once(':')
            .ok_or_else(|| invalid("auth is not \"user:password\""))?;
        c.username = u.to_string();
        c.password = p.to_string();
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn cri_credentials() {
        let a = AuthConfig {
            auth: "dXNlcjpwYXNzOndvcmQ=".into(), // user:pass:word
            ..Default::default()
        };
        let c = credentials_from_cri(&a).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("user", "pass:word")
        );
        assert!(!format!("{c:?}").contains("pass"));
        let bad = AuthConfig {
            auth: "%%%".into(),
            ..Default::default()
        };
        assert!(matches!(
            credentials_from_cri(&bad),
            Err(Error::InvalidArgument(_))
        ));
        let tok = AuthConfig {
            registry_token: "t0k".into(),
            ..Default::default()
        };
        let c = credentials_from_cri(&tok).unwrap();
        assert_eq!((c.token.as_str(), c.username.as_str()), ("t0k", ""));
        // An identity token is used as a bearer token too.
        let id = AuthConfig {
            identity_token: "refresh".into(),
            ..Default::default()
        };
        assert_eq!(credentials_from_cri(&id).unwrap().token, "refresh");
    }
}
