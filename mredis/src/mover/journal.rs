//! The journal: what a rebalance has moved, so a rerun continues where a
//! stopped one left off.

use std::sync::Mutex;

use redis::RedisResult;

use super::error;

/// Keys of MIGRATE batches whose outcome was not seen, kept in a file so a
/// later run can tell its own leftovers from conflicts. Lines are
/// `B <source> <hex key>` when a batch is sent and `E <source> <hex key>`
/// once its outcome is known; the keys begun and not ended are uncertain.
#[derive(Default)]
pub(crate) struct Journal {
    pub(crate) path: Option<std::path::PathBuf>,
    pub(crate) file: Option<Mutex<std::io::BufWriter<std::fs::File>>>,
    // (dropped with the journal: the file is closed before `finish` removes it)
    pub(crate) pending: Mutex<std::collections::HashSet<(String, Vec<u8>)>>,
    /// Keys of batches sent and not answered yet.
    pub(crate) inflight: Mutex<std::collections::HashSet<(String, Vec<u8>)>>,
}

pub(crate) fn hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Journal {
    /// Opens (or creates) the journal at `path`, keeping only the keys still
    /// uncertain.
    pub(crate) fn open(path: Option<&std::path::Path>) -> RedisResult<Journal> {
        let Some(path) = path else {
            return Ok(Journal::default());
        };
        let mut pending = std::collections::HashSet::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for line in text.lines() {
                let mut parts = line.splitn(3, ' ');
                let (Some(kind), Some(src), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
                    continue;
                };
                let Some(key) = unhex(key) else { continue };
                match kind {
                    "B" => {
                        pending.insert((src.to_string(), key));
                    }
                    "E" => {
                        pending.remove(&(src.to_string(), key));
                    }
                    _ => {}
                }
            }
        }
        let io = |e: std::io::Error| error(format!("journal {}: {e}", path.display()));
        let file = std::fs::File::create(path).map_err(io)?;
        let mut file = std::io::BufWriter::new(file);
        for (src, key) in &pending {
            use std::io::Write;
            writeln!(file, "B {src} {}", hex(key)).map_err(io)?;
        }
        std::io::Write::flush(&mut file).map_err(io)?;
        Ok(Journal {
            path: Some(path.to_path_buf()),
            file: Some(Mutex::new(file)),
            pending: Mutex::new(pending),
            inflight: Mutex::default(),
        })
    }

    pub(crate) fn write(&self, kind: char, src: &str, keys: &[Vec<u8>]) -> RedisResult<()> {
        let Some(file) = &self.file else { return Ok(()) };
        use std::io::Write;
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        let io = |e: std::io::Error| error(format!("writing the rebalance journal: {e}"));
        for k in keys {
            writeln!(f, "{kind} {src} {}", hex(k)).map_err(io)?;
        }
        f.flush().map_err(io)
    }

    /// Before sending a batch: its keys are in flight.
    pub(crate) fn begin(&self, src: &str, keys: &[Vec<u8>]) -> RedisResult<()> {
        let mut f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            f.insert((src.to_string(), k.clone()));
        }
        drop(f);
        self.write('B', src, keys)
    }

    /// The batch was answered (BUSYKEY): not in flight any more, but an
    /// uncertainty left by an earlier batch stays until the key is settled.
    pub(crate) fn answered(&self, src: &str, keys: &[Vec<u8>]) {
        let mut f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        for k in keys {
            f.remove(&(src.to_string(), k.clone()));
        }
    }

    /// The key is settled (moved, gone, resolved or listed as a conflict).
    pub(crate) fn end(&self, src: &str, keys: &[Vec<u8>]) -> RedisResult<()> {
        self.answered(src, keys);
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for k in keys {
                p.remove(&(src.to_string(), k.clone()));
            }
        }
        self.write('E', src, keys)
    }

    /// The replies of `src`'s batches in flight were not seen (a timeout):
    /// their keys are uncertain for the retry.
    pub(crate) fn lost(&self, src: &str) {
        let mut f = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|(s, k)| {
            if s == src {
                p.insert((s.clone(), k.clone()));
                false
            } else {
                true
            }
        });
    }

    /// Was `key` in a batch from `src` whose outcome was not seen?
    pub(crate) fn uncertain(&self, src: &str, key: &[u8]) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&(src.to_string(), key.to_vec()))
    }

    /// After a run that verified every key on its owner and no key on two
    /// servers: nothing in the journal can matter any more.
    pub(crate) fn finish(&self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}
