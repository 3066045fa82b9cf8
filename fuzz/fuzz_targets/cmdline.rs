//! The kernel command line, as the boot loader hands it over: any bytes up
//! to the NUL that pvh.rs turned into UTF-8 (or refused).
#![no_main]

use hyperbatch::cmdline::{self, Error, KEYS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first bytes feed skip_cpu's check; the rest is the line.
    let (ids, line) = data.split_at(data.len().min(8));
    let line = String::from_utf8_lossy(line);
    match cmdline::parse(&line) {
        Ok(c) => {
            // Borrowed values point into the line.
            for v in [c.test, c.suite].into_iter().flatten() {
                let range = line.as_bytes().as_ptr_range();
                assert!(range.contains(&v.as_ptr()) || v.is_empty());
            }
            // A line that parsed parses the same again (no hidden state).
            assert_eq!(cmdline::parse(&line), Ok(c));
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty());
            // The error names what the user typed.
            match e {
                Error::UnknownKey(k) => assert!(line.contains(k) && text.contains(k)),
                Error::BadValue { key, value, .. } => {
                    assert!(line.contains(value) && text.contains(value));
                    assert!(KEYS.iter().any(|k| k.name == key) && text.contains(key));
                }
                Error::MissingValue(key) | Error::Duplicate(key) => {
                    assert!(line.contains(key) && text.contains(key))
                }
                Error::NotForRun { key, run, runs, .. } => {
                    assert!(line.contains(key) && text.contains(key));
                    assert!(!runs.contains(&run));
                }
            }
        }
    }
    // skip_cpu's check against a made-up CPU list.
    if let Some((&skip, rest)) = ids.split_first() {
        let listed: Vec<u32> = rest.iter().map(|&b| u32::from(b % 8)).collect();
        let boot = listed.first().copied().unwrap_or(0);
        let skip = u32::from(skip % 10);
        match cmdline::check_skip_cpu(skip, boot, &listed) {
            Ok(()) => assert!(skip != boot && listed.contains(&skip)),
            Err(e) => assert!(e.to_string().contains(&format!("skip_cpu={skip}"))),
        }
    }
});
