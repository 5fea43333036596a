//! Gradient checkpointing on a model handle: the core recomputes each decoder layer in the
//! backward, which runs in a later call (`Tensor.backward`), so the handle lends the model
//! to it through this `ModelAccess` (a read lock per layer, none held across layers).
use crate::model::ModelState;
use peft_core::model::{CausalLm, ModelAccess, ModelHooks};
use peft_core::{Error, Result};
use std::sync::{RwLock, Weak};

/// Weak: a graph left over from a forward must not keep a disposed model alive.
pub struct LentModel(pub Weak<RwLock<Option<ModelState>>>);

impl ModelAccess for LentModel {
    fn with_model(&self, f: &mut dyn FnMut(&CausalLm, Option<&dyn ModelHooks>) -> Result<()>) -> Result<()> {
        let gone =
            || Error::Unsupported("gradient checkpointing: the model was disposed before the backward that recomputes its layers".into());
        let model = self.0.upgrade().ok_or_else(gone)?;
        let guard = model.read().unwrap_or_else(|e| e.into_inner());
        let m = guard.as_ref().ok_or_else(gone)?;
        f(&m.llama, Some(&m.tuners))
    }
}
