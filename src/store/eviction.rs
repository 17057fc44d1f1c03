//! Eviction order for the in-process stores: oldest first, with lazy deletion.

use std::collections::VecDeque;

/// Keys in insertion order, each tagged with a generation, so that an entry replaced or removed
/// since it was queued is skipped when popped instead of searched for when it goes.
#[derive(Debug)]
pub(crate) struct EvictionQueue<K> {
    queue: VecDeque<(K, u64)>,
    generation: u64,
}

impl<K> Default for EvictionQueue<K> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            generation: 0,
        }
    }
}

impl<K> EvictionQueue<K> {
    /// Queues `key`; the entry must remember the returned generation.
    pub(crate) fn push(&mut self, key: K) -> u64 {
        self.generation += 1;
        self.queue.push_back((key, self.generation));
        self.generation
    }

    /// The oldest queued key and its generation; it may be stale.
    pub(crate) fn pop(&mut self) -> Option<(K, u64)> {
        self.queue.pop_front()
    }

    /// Drops stale items once they outnumber the `live` entries, so the queue stays
    /// proportional to what it orders.
    pub(crate) fn compact(&mut self, live: usize, mut is_live: impl FnMut(&K, u64) -> bool) {
        if self.queue.len() > 2 * live + 64 {
            self.queue
                .retain(|(key, generation)| is_live(key, *generation));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_items_are_dropped_once_they_outnumber_live_ones() {
        let mut queue = EvictionQueue::default();
        for _ in 0..1000 {
            let live = (7, queue.push(7));
            queue.compact(1, |key, generation| (*key, generation) == live);
        }
        assert!(queue.len() <= 2 + 64 + 1, "{} items", queue.len());
        let mut last = None;
        while let Some(item) = queue.pop() {
            assert!(last.is_none_or(|(_, g)| g < item.1), "oldest first");
            last = Some(item);
        }
        assert_eq!(last, Some((7, 1000)), "the live item is kept");
    }
}
