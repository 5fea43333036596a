//! One batch as it crosses from JS, and the options of a forward: typed objects instead of
//! positional arguments, converted to the core's `Batch` in one place (forward, the
//! inference-mode loss, Fisher estimates and FishDIP all take the same object).
use crate::error::{invalid, Result};
use napi::bindgen_prelude::{Int32Array, Uint32Array, Uint8Array};
use napi_derive::napi;
use peft_core::model::Batch;
use peft_core::tuners::sparse_mask::FisherBatch;

/// Token ids [batch, seq] flattened row-major, with the optional per-token fields of the same
/// shape (`src/inputs.ts` `nativeBatch` checks and flattens them).
#[napi(object)]
pub struct BatchInput {
    pub input_ids: Uint32Array,
    pub batch: u32,
    pub seq: u32,
    pub attention_mask: Option<Uint8Array>,
    /// Next-token labels, -100 where no loss is taken.
    pub labels: Option<Int32Array>,
    pub position_ids: Option<Int32Array>,
    /// Packed sequences: the example each token belongs to.
    pub segment_ids: Option<Uint32Array>,
}

/// `forward`'s options besides the batch.
#[napi(object)]
#[derive(Default)]
pub struct ForwardOptions {
    /// Makes a training step's dropout reproducible (checkpoint resume).
    pub dropout_seed: Option<i64>,
    /// One adapter (or `__base__`) per row, PEFT's `adapter_names=`.
    pub adapter_names: Option<Vec<String>>,
    /// false (labels needed): the loss alone, without the [b, t, vocab] logits.
    pub return_logits: Option<bool>,
}

pub type Labels = Vec<Vec<i64>>;

pub(crate) fn rows<T: Copy>(flat: &[T], batch: usize, seq: usize, name: &str) -> Result<Vec<Vec<T>>> {
    if batch * seq != flat.len() || batch == 0 || seq == 0 {
        return Err(invalid(name, &format!("{} values for shape [{batch}, {seq}]", batch * seq), format!("{} values", flat.len())));
    }
    Ok(flat.chunks(seq).map(<[T]>::to_vec).collect())
}

fn widen<T: Copy + Into<i64>>(rows: Vec<Vec<T>>) -> Vec<Vec<i64>> {
    rows.into_iter().map(|r| r.into_iter().map(Into::into).collect()).collect()
}

impl BatchInput {
    /// The core's batch and labels; errors name `{prefix}inputIds`, `{prefix}labels`, ...
    pub fn to_core(&self, prefix: &str) -> Result<(Batch, Option<Labels>)> {
        let (b, t) = (self.batch as usize, self.seq as usize);
        let name = |field: &str| format!("{prefix}{field}");
        let mut input = Batch::new(rows(&self.input_ids, b, t, &name("inputIds"))?);
        if let Some(m) = &self.attention_mask {
            input.attention_mask = Some(rows(m, b, t, &name("attentionMask"))?);
        }
        if let Some(p) = &self.position_ids {
            input.position_ids = Some(widen(rows(p, b, t, &name("positionIds"))?));
        }
        if let Some(s) = &self.segment_ids {
            input.segment_ids = Some(rows(s, b, t, &name("segmentIds"))?);
        }
        let labels = self.labels.as_ref().map(|l| rows(l, b, t, &name("labels")).map(widen)).transpose()?;
        Ok((input, labels))
    }

    /// As `to_core`, for the calls whose loss needs labels.
    pub fn to_labelled(&self, prefix: &str) -> Result<(Batch, Labels)> {
        match self.to_core(prefix)? {
            (batch, Some(labels)) => Ok((batch, labels)),
            (_, None) => Err(invalid(&format!("{prefix}labels"), "next-token labels", "none")),
        }
    }

    /// One batch of a Fisher estimate (`batches[i]`).
    pub fn to_fisher(&self, i: usize) -> Result<FisherBatch> {
        let (batch, labels) = self.to_labelled(&format!("batches[{i}]."))?;
        Ok(FisherBatch { batch, labels })
    }
}
