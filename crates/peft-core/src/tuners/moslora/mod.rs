//! MoSLoRA (Wu et al. 2024, "Mixture-of-Subspaces in Low-Rank Adaptation", eq. 4):
//! h = W₀x + s · B W A x, LoRA with a trainable r×r mixer W between the down- and
//! up-projections, which mixes every subspace of A with every one of B (plain LoRA is the
//! special case W = I). Scaling s = lora_alpha / r as LoRA's. The update is still a single
//! low-rank ΔW = s·B W A, so the adapter merges. Init after the paper's code (`lora_AB`, an
//! `nn.Linear(r, r)` with Kaiming-uniform init; A Kaiming-uniform, B zeros, so ΔW starts at 0).
//! Our own `peft_type` "MOSLORA"; tensors `<module>.lora_A|lora_AB|lora_B.weight`.
use crate::error::Result;
use crate::model::{Ctx, Linear};
use crate::model::{ParamId, ParamStore};
use crate::tuners::fields::Fields;
use crate::tuners::init::kaiming_uniform;
use crate::tuners::lora::layer::{delta_weight, low_rank_forward};
use crate::tuners::low_rank::{low_rank_plumbing, merges_delta, parse_fields, LowRank};
use crate::tuners::{param_name, AdapterLayer, BuildCtx, LinearInfo, TargetSpec, TunerConfig};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct MosLoraConfig {
    pub fields: Fields,
    pub targets: TargetSpec,
    pub low_rank: LowRank,
}

impl MosLoraConfig {
    pub fn from_value(value: &Value, source: &Path) -> Result<(Self, Vec<crate::Warning>)> {
        let (f, low_rank, warnings) = parse_fields(value, "MOSLORA", "MoSLoraConfig", json!({}), "the rank", source)?;
        Ok((MosLoraConfig { low_rank, targets: f.target_spec()?, fields: f }, warnings))
    }
}

impl TunerConfig for MosLoraConfig {
    low_rank_plumbing!("MOSLORA");

    fn create_linear(&self, t: &LinearInfo, bc: &mut BuildCtx) -> Result<Box<dyn AdapterLayer>> {
        let (a, b) = self.low_rank.add_factors(t, bc)?;
        let dev = bc.store.get(t.weight).value().device().clone();
        let r = self.low_rank.r;
        let mixer = bc.store.add(param_name(&t.path, "lora_AB", bc.adapter), kaiming_uniform(r, r, bc.rng, bc.dtype, &dev)?, false)?;
        Ok(Box::new(MosLoraLayer {
            adapter: bc.adapter.to_string(),
            a,
            mixer,
            b,
            scaling: self.low_rank.scaling(),
            dropout: self.low_rank.lora_dropout,
        }))
    }
}

#[derive(Debug)]
pub struct MosLoraLayer {
    pub adapter: String,
    /// A [r, in], the mixer W [r, r], B [out, r].
    pub a: ParamId,
    pub mixer: ParamId,
    pub b: ParamId,
    pub scaling: f64,
    pub dropout: f64,
}

impl MosLoraLayer {
    fn delta(&self, store: &ParamStore) -> Result<Tensor> {
        let v = |id| store.get(id).value().clone();
        delta_weight(&v(self.mixer).matmul(&v(self.a))?, &v(self.b), self.scaling)
    }
}

impl AdapterLayer for MosLoraLayer {
    fn adapter_name(&self) -> &str {
        &self.adapter
    }

    fn params(&self) -> Vec<ParamId> {
        vec![self.a, self.mixer, self.b]
    }

    /// `result + s · B(W(A(dropout(x))))`: W A is formed first ([r, in], cheap), then LoRA's
    /// own forward runs with it as the down-projection.
    fn forward(&self, _base: &Linear, x: &Tensor, result: Tensor, ctx: &Ctx) -> Result<Tensor> {
        let mixed_a = ctx.param(self.mixer).matmul(&ctx.param(self.a))?;
        low_rank_forward(x, result, &mixed_a, &ctx.param(self.b), self.scaling, self.dropout, ctx)
    }

    merges_delta!();
}
