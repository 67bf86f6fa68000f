//! The config loader: YAML text → `Config::parse_file` → `config::resolve` (environment,
//! overrides, defaults, validation), as `peerd run` and a reload do. A config either
//! loads or is rejected with field errors; a loaded config names its local upstream.
//! Each word of the input is also read as a duration, which must print back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerd::config::{
    Config, ConfigError, Env, Overrides, format_duration, parse_duration, resolve,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Every duration field goes through `parse_duration`: what it accepts prints back
    // to itself.
    for word in text.split_whitespace().take(8) {
        if let Ok(d) = parse_duration(word) {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{word:?}");
        }
    }
    let Ok(file) = Config::parse_file(text) else {
        return;
    };
    let env = Env::from_pairs([("PEERD_FUZZ", "1")]);
    match resolve(file, &env, &Overrides::default(), None) {
        Ok(config) => {
            assert!(
                config.local_upstream().is_some(),
                "a resolved config has its local upstream"
            );
            for ip in ["10.0.0.1", "127.0.0.1", "::1"] {
                let _ = config.probe_target_allowed(ip.parse().expect("literal"));
            }
            for peer in &config.peers {
                let _ = config.peer_identity(peer);
                let _ = config.peer_is_flat(peer);
            }
        }
        Err(ConfigError::Invalid(errors)) => {
            assert!(
                !errors.is_empty(),
                "an invalid config names at least one field"
            );
        }
        Err(other) => panic!("resolve failed with a non-validation error: {other}"),
    }
});
