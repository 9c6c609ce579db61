//! Rep ids as small integers (`RepIds`).

use super::Map;

/// Rep ids as small integers, so that the rep × day grain does not hold a string per key.
/// Written as the list of names (`segments::Kind::RepNames`); the index is rebuilt on restore.
#[derive(Debug, Clone, Default)]
pub struct RepIds {
    pub(super) names: Vec<String>,
    pub(super) index: Map<String, u32>,
}

impl RepIds {
    /// The id of `rep`, given a new one on first sight.
    pub fn id(&mut self, rep: &str) -> u32 {
        if let Some(id) = self.index.get(rep) {
            return *id;
        }
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(rep.to_string());
        self.index.insert(rep.to_string(), id);
        id
    }

    /// The id of `rep`, if the state names it.
    pub fn find(&self, rep: &str) -> Option<u32> {
        self.index.get(rep).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("", String::as_str)
    }

    /// Puts `names` at ids `from..` (a restore appends the names segment by segment).
    pub(super) fn put(&mut self, from: usize, names: Vec<String>) {
        for n in self.names.drain(from.min(self.names.len())..) {
            self.index.remove(&n);
        }
        for n in names {
            self.id(&n);
        }
    }
}

impl PartialEq for RepIds {
    fn eq(&self, other: &RepIds) -> bool {
        self.names == other.names
    }
}
