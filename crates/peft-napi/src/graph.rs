//! The autograd graph one forward built, shared by every handle that forward returned (logits,
//! loss, and tensors derived from them with `mulScalar`).
//!
//! A candle tensor keeps its whole op graph alive through its Arc'd parents, so a loss or logits
//! handle held by JS kept every saved activation of its forward until the GC collected the
//! wrapper: a README-style loop that never calls `dispose()` peaked at 2.4× the loop that does.
//! As PyTorch does by default (`retain_graph=False`), `backward` frees the graph when it is done:
//! each member handle is swapped for `Tensor::detach()` (same storage, no op graph), so only the
//! tensors' own data stays, and a second `backward` through the same graph is refused.
use candle_core::Tensor;
use peft_core::model::Checkpointing;
use std::sync::{Arc, Mutex, Weak};

/// The slot a `NativeTensor` handle reads; `None` once disposed.
pub type Slot = Arc<Mutex<Option<Tensor>>>;

#[derive(Default)]
struct State {
    /// Weak: a disposed or collected handle must not be kept alive by its graph.
    members: Vec<Weak<Mutex<Option<Tensor>>>>,
    /// Set (on the JS thread) when a backward that frees the graph starts, so that a second
    /// call is refused even before the first has finished.
    freed: bool,
}

#[derive(Default)]
pub struct Graph(Mutex<State>, Option<Checkpointing>);

pub type SharedGraph = Arc<Graph>;

impl Graph {
    pub fn new_shared() -> SharedGraph {
        Arc::new(Graph::default())
    }

    /// A graph whose decoder layers were checkpointed: a backward through it must collect the
    /// layers' parameter gradients from `checkpoint` (`Checkpointing::collect_into`).
    pub fn new_shared_with(checkpoint: Option<Checkpointing>) -> SharedGraph {
        Arc::new(Graph(Mutex::default(), checkpoint))
    }

    pub fn checkpointing(&self) -> Option<&Checkpointing> {
        self.1.as_ref()
    }

    pub fn join(&self, slot: &Slot) {
        let mut s = self.0.lock().unwrap();
        s.members.retain(|w| w.strong_count() > 0);
        s.members.push(Arc::downgrade(slot));
    }

    pub fn is_freed(&self) -> bool {
        self.0.lock().unwrap().freed
    }

    /// A backward without `retainGraph` has started: no other may start.
    pub fn mark_freed(&self) {
        self.0.lock().unwrap().freed = true;
    }

    /// That backward failed before it used the graph: it is still whole, let a retry run.
    pub fn unmark_freed(&self) {
        self.0.lock().unwrap().freed = false;
    }

    /// Detaches every live member, dropping the graph's intermediates now (once no running job
    /// still holds its own clone of a member).
    pub fn release(&self) {
        let members = std::mem::take(&mut self.0.lock().unwrap().members);
        for slot in members.iter().filter_map(Weak::upgrade) {
            let mut t = slot.lock().unwrap();
            if let Some(detached) = t.as_ref().map(Tensor::detach) {
                *t = Some(detached);
            }
        }
    }
}
