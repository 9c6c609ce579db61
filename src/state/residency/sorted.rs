//! A map held as one vector sorted by key: no spare slots and no allocation per entry, where
//! a hash map keeps up to half its slots free after it doubles. For an index that grows in
//! batches and is read by key, the deals out of memory (`deals`): a look-up is a binary
//! search, a batch of inserts one sort (of a sorted run and the batch), a batch of removals
//! one pass.

/// Entries sorted by key, each key once.
#[derive(Debug, Clone)]
pub struct SortedMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for SortedMap<K, V> {
    fn default() -> SortedMap<K, V> {
        SortedMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> SortedMap<K, V> {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, k: &K) -> Result<usize, usize> {
        self.entries.binary_search_by(|(e, _)| e.cmp(k))
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        let i = self.position(k).ok()?;
        Some(&self.entries[i].1)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.position(k).ok()?;
        Some(&mut self.entries[i].1)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.position(k).is_ok()
    }

    /// Adds `batch`; a key already held, or held twice in the batch, keeps the value added
    /// last. The vector grows by the batch exactly.
    pub fn extend(&mut self, batch: Vec<(K, V)>) {
        if batch.is_empty() {
            return;
        }
        self.entries.reserve_exact(batch.len());
        self.entries.extend(batch);
        // Stable: equal keys stay in the order added.
        self.entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
    }

    /// Keeps the entries `keep` says to, in one pass.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.entries.retain(|(k, v)| keep(k, v));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_merge_in_key_order_and_the_last_value_of_a_key_wins() {
        let mut m = SortedMap::default();
        m.extend(vec![(5, "five"), (1, "one"), (3, "three")]);
        m.extend(vec![(4, "four"), (1, "uno"), (9, "nine"), (4, "vier")]);
        let got: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            got,
            vec![
                (1, "uno"),
                (3, "three"),
                (4, "vier"),
                (5, "five"),
                (9, "nine")
            ]
        );
        assert_eq!(m.entries.capacity(), 7, "grown by each batch exactly");
        assert_eq!((m.get(&3), m.get(&2)), (Some(&"three"), None));
        *m.get_mut(&9).unwrap() = "neun";
        m.retain(|k, _| k % 2 == 1);
        let got: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(
            got,
            vec![(1, "uno"), (3, "three"), (5, "five"), (9, "neun")]
        );
        assert!(m.contains_key(&5) && !m.contains_key(&4));
        assert_eq!(m.values().count(), m.len());
    }
}
