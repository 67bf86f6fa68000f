//! The effective configuration as a support bundle shows it: the validated [`Config`]
//! rendered as text with every URL's credentials (user info, query string) replaced by
//! `<redacted>`.
//!
//! The configuration holds only paths to keys and tokens, never their contents, so the
//! only secrets it can carry are in URLs (a kubeconfig-less API server URL, the OTLP
//! endpoint). It must never read the files the configuration points to.

use crate::config::Config;

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// `config` as text, URL credentials redacted.
pub fn config_text(config: &Config) -> String {
    redact_urls(&format!("{config:#?}"))
}

/// Replaces the user info and the query of every `scheme://…` URL in `text`.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c == '"' || c == '\'' || c == ')' || c == ',' || c.is_whitespace())
            .unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        out.push_str(&redact_url_tail(url));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `url` is what follows `scheme://`.
fn redact_url_tail(url: &str) -> String {
    let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
    let (authority, path) = url.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let path = match path.find('?') {
        Some(q) => format!("{}?{REDACTED}", &path[..q]),
        None => path.to_string(),
    };
    authority + &path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_and_queries_are_redacted_and_the_rest_kept() {
        let text = r#"otlp_endpoint: Some("https://user:s3cret@collector:4317/v1?token=abc"), api: Server("http://10.0.0.1:6443")"#;
        let out = redact_urls(text);
        assert!(!out.contains("s3cret"), "{out}");
        assert!(!out.contains("abc"), "{out}");
        assert!(!out.contains("user:"), "{out}");
        assert!(
            out.contains(r#""https://<redacted>@collector:4317/v1?<redacted>""#),
            "{out}"
        );
        assert!(out.contains(r#"Server("http://10.0.0.1:6443")"#), "{out}");
        assert_eq!(redact_urls("no urls here"), "no urls here");
    }

    #[test]
    fn the_config_renders_paths_not_contents() {
        let file = Config::parse_file(
            "cluster: c1\ntelemetry: { otlpEndpoint: 'http://u:pw@127.0.0.1:4317' }\n",
        )
        .unwrap();
        let config = crate::config::resolve(
            file,
            &crate::config::Env::default(),
            &crate::config::Overrides::default(),
            None,
        )
        .unwrap();
        let text = config_text(&config);
        assert!(text.contains("cluster: \"c1\""), "{text}");
        assert!(!text.contains("u:pw"), "{text}");
        assert!(text.contains("http://<redacted>@127.0.0.1:4317"), "{text}");
    }
}
