//! Validation of the `xds` section (the downstream xDS server): TLS files, the bearer
//! token file, the identities allowed to read the merged view, message and resource
//! limits.
//!
//! Owns only the rules of that section. File checks are existence checks only.

use crate::config::file::FileConfig;
use crate::config::{ServerTls, XdsServer, defaults};
use crate::xds::auth::ZTUNNEL_IDENTITY;

use super::Checker;

impl Checker<'_> {
    pub(super) fn xds_server(&mut self, file: &FileConfig) -> XdsServer {
        let x = &file.xds;
        let cert_chain = self.file("xds.tls.certChain", &x.tls.cert_chain);
        let key = self.file("xds.tls.key", &x.tls.key);
        let client_roots = self.file("xds.tls.root", &x.tls.root);
        let tls = match (cert_chain, key) {
            (Some(cert_chain), Some(key)) => Some(ServerTls {
                cert_chain,
                key,
                client_roots,
            }),
            (None, None) => {
                if x.tls.root.is_some() {
                    self.err(
                        "xds.tls.root",
                        "set without xds.tls.certChain and xds.tls.key",
                    );
                }
                None
            }
            _ if x.tls.cert_chain.is_none() => {
                self.err("xds.tls.certChain", "must be set together with xds.tls.key");
                None
            }
            _ if x.tls.key.is_none() => {
                self.err("xds.tls.key", "must be set together with xds.tls.certChain");
                None
            }
            // One of the two files is missing; already reported.
            _ => None,
        };
        let allowed_identities = match &x.auth.allowed_identities {
            None => vec![ZTUNNEL_IDENTITY.to_string()],
            Some(list) => {
                if list.is_empty() {
                    self.err(
                        "xds.auth.allowedIdentities",
                        "must name at least one identity (nobody could read the merged view)",
                    );
                }
                for (i, id) in list.iter().enumerate() {
                    if id.trim().is_empty() || id.chars().any(char::is_whitespace) {
                        self.err(
                            format!("xds.auth.allowedIdentities[{i}]"),
                            "must be a non-empty identity without whitespace",
                        );
                    }
                }
                list.clone()
            }
        };
        XdsServer {
            tls,
            token_file: self.file("xds.auth.tokenFile", &x.auth.token_file),
            allowed_identities,
            debounce: self.duration("xds.debounce", &x.debounce, defaults::DEBOUNCE),
            max_message_bytes: self.message_bytes("xds.maxMessageBytes", x.max_message_bytes),
            connection_queue: self.positive(
                "xds.connectionQueue",
                x.connection_queue,
                defaults::CONNECTION_QUEUE,
            ),
        }
    }
}
