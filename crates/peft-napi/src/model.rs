//! The model handle: loading, forward (with the loss), parameters.
use crate::batch::{BatchInput, ForwardOptions};
use crate::error::{closed, invalid, to_js, Result};
use crate::job::{ModelJob, TensorsJob};
use crate::tensor::NativeTensor;
use candle_core::{DType, Device};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;
use peft_core::dtype::name as dtype_name;
use peft_core::model::{CausalLm, Checkpointing, LoadOptions};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub use peft_core::state::ModelState;

pub type SharedModel = Arc<RwLock<Option<ModelState>>>;

pub fn with_model<R>(m: &SharedModel, f: impl FnOnce(&ModelState) -> peft_core::Result<R>) -> Result<R> {
    let g = m.read().unwrap_or_else(|e| e.into_inner());
    f(g.as_ref().ok_or_else(|| closed("LlamaModel"))?).map_err(to_js)
}

pub fn with_model_mut<R>(m: &SharedModel, f: impl FnOnce(&mut ModelState) -> peft_core::Result<R>) -> Result<R> {
    let mut g = m.write().unwrap_or_else(|e| e.into_inner());
    f(g.as_mut().ok_or_else(|| closed("LlamaModel"))?).map_err(to_js)
}

pub fn parse_dtype(s: Option<&str>) -> Result<DType> {
    peft_core::dtype::parse(s.unwrap_or("float32"), "dtype").map_err(to_js)
}

pub fn parse_device(s: Option<&str>) -> Result<Device> {
    match s.unwrap_or("cpu") {
        "cpu" => Ok(Device::Cpu),
        d if d == "cuda" || d.starts_with("cuda:") => {
            let ordinal: usize = d.strip_prefix("cuda:").map_or(Ok(0), str::parse).map_err(|_| invalid("device", "\"cuda:N\"", d))?;
            Device::new_cuda(ordinal)
                .map_err(|e| invalid("device", "a device this build supports", format!("{d:?} ({e}); install the CUDA build of peft-node")))
        }
        other => Err(invalid("device", "\"cpu\", \"cuda\" or \"cuda:N\"", format!("{other:?}"))),
    }
}

#[napi(object)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<u32>,
    pub dtype: String,
    /// The storage type of a frozen weight kept quantized or in half precision ("Q4_0",
    /// "Q6K", "BF16", ...); computations see it as `dtype`.
    pub storage: Option<String>,
    pub requires_grad: bool,
    pub has_grad: bool,
    /// The name PEFT's `named_parameters()` gives it (`Tuners::peft_names`).
    pub peft_name: String,
}

#[napi]
pub struct NativeModel {
    pub(crate) inner: SharedModel,
}

#[napi]
pub fn load_model(path: String, dtype: Option<String>, device: Option<String>) -> Result<AsyncTask<ModelJob>> {
    // Without a dtype, frozen weights stay in their storage type (GGUF quantizations, f16/bf16).
    let quantized = dtype.is_none();
    let opts = LoadOptions { dtype: parse_dtype(dtype.as_deref())?, device: parse_device(device.as_deref())?, quantized };
    Ok(ModelJob::spawn(move || {
        let (llama, tokenizer) = CausalLm::from_pretrained_with_tokenizer(std::path::Path::new(&path), &opts).map_err(to_js)?;
        crate::alloc::release_freed_memory(); // the load's temporary buffers, before training counts RSS
        Ok(NativeModel { inner: Arc::new(RwLock::new(Some(ModelState::new(llama, tokenizer, path)))) })
    }))
}

#[napi]
impl NativeModel {
    /// The resolved config, as JSON in Hugging Face's key names.
    #[napi]
    pub fn config_json(&self) -> Result<String> {
        with_model(&self.inner, |m| Ok(m.llama.config.resolved_json().to_string()))
    }

    /// Logits [b, t, vocab], and the mean loss when labels are given.
    /// `return_logits` false (labels needed): the loss alone, computed chunk by chunk without
    /// the [b, t, vocab] logits (`CausalLm::loss_sum`); the result is then `[loss]`.
    #[napi]
    pub fn forward(&self, input: BatchInput, options: Option<ForwardOptions>) -> Result<AsyncTask<TensorsJob>> {
        let ForwardOptions { dropout_seed, adapter_names, return_logits } = options.unwrap_or_default();
        let return_logits = return_logits.unwrap_or(true);
        if !return_logits && input.labels.is_none() {
            return Err(invalid("returnLogits", "true (the default) when no labels are given", "false"));
        }
        let (input, labels) = input.to_core("")?;
        let shared = self.inner.clone();
        let owner = self.inner.clone();
        let lent = Arc::downgrade(&self.inner);
        Ok(TensorsJob::spawn(move || {
            let (logits, loss, checkpoint) = with_model(&shared, |m| {
                let lent = || Checkpointing::new(Arc::new(crate::checkpoint::LentModel(lent)));
                let (mut ctx, checkpoint) = m.training_ctx(dropout_seed.map(|s| s as u64), adapter_names.as_deref(), lent)?;
                if let Some(l) = &labels {
                    // Instance-dependent prompts read only the positions before the first target.
                    ctx = ctx.with_labels(l);
                }
                let out = m.forward(&input, labels.as_deref(), &ctx, return_logits)?;
                Ok((out.logits, out.loss, checkpoint))
            })?;
            // One graph for both: the loss's backward frees the logits' graph too.
            let graph = crate::graph::Graph::new_shared_with(checkpoint);
            let mut out: Vec<NativeTensor> = logits.into_iter().map(|l| NativeTensor::in_graph(l, owner.clone(), &graph)).collect();
            out.extend(loss.map(|l| NativeTensor::in_graph(l, owner, &graph)));
            Ok(out)
        }))
    }

    /// Writes the base model (config.json, model.safetensors) and its tokenizer as a Hugging
    /// Face checkpoint; merge adapters first to include them.
    /// `dtype` (default: the model's) converts the weights as they are written.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_pretrained(&self, dir: String, dtype: Option<String>) -> Result<AsyncTask<crate::job::UnitJob>> {
        let shared = self.inner.clone();
        let dtype = dtype.as_deref().map(|d| parse_dtype(Some(d))).transpose()?;
        Ok(crate::job::UnitJob::spawn(move || {
            with_model(&shared, |m| {
                let dir = std::path::Path::new(&dir);
                m.llama.save_with_tokenizer(dir, dtype, m.tokenizer.as_ref())
            })
        }))
    }

    /// Writes the model as a llama.cpp GGUF (`outtype`: f32, f16, bf16, q8_0, q4_0 or q4_k_m)
    /// with its tokenizer and chat template; refused while adapters are attached unmerged.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn save_gguf(&self, path: String, outtype: String) -> Result<AsyncTask<crate::job::UnitJob>> {
        let shared = self.inner.clone();
        let out = peft_core::io::gguf::OutType::parse(&outtype).map_err(to_js)?;
        Ok(crate::job::UnitJob::spawn(move || {
            with_model(&shared, |m| {
                let names = m.tuners.names();
                if !names.is_empty() {
                    return Err(peft_core::Error::Unsupported(format!(
                        "this model has adapters attached ({}); merge them first (peft.mergeAndUnload()) or export the adapter alone (peft.saveGguf)", names.join(", "))));
                }
                let spec = m.tokenizer.as_ref().map(|t| t.gguf_spec(m.llama.config.vocab_size)).transpose()?;
                let ids: std::collections::HashMap<&str, _> = m.llama.store.iter().map(|(id, p)| (p.name.as_str(), id)).collect();
                let file = std::path::Path::new(&path);
                let source = |hf: &str| {
                    ids.get(hf)
                        .map(|&id| m.llama.store.get(id).value().clone())
                        .ok_or_else(|| peft_core::Error::MissingWeight { file: file.into(), name: hf.to_string() })
                };
                peft_core::io::gguf::write_gguf(file, &m.llama.config, source, out, spec.as_ref())
            })
        }))
    }

    /// The tokenizer that came with the checkpoint, if any.
    #[napi]
    pub fn tokenizer(&self) -> Result<Option<crate::tokenizer::NativeTokenizer>> {
        with_model(&self.inner, |m| Ok(m.tokenizer.clone().map(crate::tokenizer::NativeTokenizer::new)))
    }

    #[napi]
    pub fn parameters(&self) -> Result<Vec<ParamInfo>> {
        with_model(&self.inner, |m| {
            let peft_names = m.tuners.peft_names(m.llama.store.iter().map(|(_, p)| p.name.as_str()));
            Ok(m.llama
                .store
                .iter()
                .zip(peft_names)
                .map(|((_, p), peft_name)| ParamInfo {
                    name: p.name.clone(),
                    shape: p.dims().iter().map(|d| *d as u32).collect(),
                    dtype: dtype_name(p.dtype()).into(),
                    storage: p.quantized().map(|q| format!("{:?}", q.dtype())),
                    requires_grad: p.requires_grad(),
                    has_grad: p.grad.is_some(),
                    peft_name,
                })
                .collect())
        })
    }

    /// transformers' `gradient_checkpointing_enable()` / `_disable()`.
    #[napi]
    pub fn set_gradient_checkpointing(&self, on: bool) -> Result<()> {
        with_model_mut(&self.inner, |m| {
            crate::alloc::checkpointing_changed(m.gradient_checkpointing, on);
            m.gradient_checkpointing = on;
            Ok(())
        })
    }

    #[napi]
    pub fn gradient_checkpointing(&self) -> Result<bool> {
        with_model(&self.inner, |m| Ok(m.gradient_checkpointing))
    }

    /// The auxiliary loss terms of the last training forward (`mixlora_balance`), by name;
    /// they are already included in that forward's loss. Empty when no method adds one.
    #[napi]
    pub fn aux_losses(&self) -> Result<HashMap<String, f64>> {
        with_model(&self.inner, |m| {
            Ok(m.last_aux_losses.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect())
        })
    }

    #[napi]
    pub fn set_requires_grad(&self, name: String, value: bool) -> Result<()> {
        with_model_mut(&self.inner, |m| {
            let p = m.llama.store.by_name_mut(&name)?;
            p.set_requires_grad(value)?;
            if !value {
                p.grad = None;
            }
            Ok(())
        })
    }

    #[napi]
    pub fn requires_grad(&self, name: String) -> Result<bool> {
        with_model(&self.inner, |m| Ok(m.llama.store.by_name(&name)?.requires_grad()))
    }

    /// The parameter's value (shares storage: later optimizer steps show through).
    #[napi]
    pub fn param_data(&self, name: String) -> Result<NativeTensor> {
        with_model(&self.inner, |m| Ok(NativeTensor::new(m.llama.store.by_name(&name)?.value().detach(), None)))
    }

    #[napi]
    pub fn param_grad(&self, name: String) -> Result<Option<NativeTensor>> {
        with_model(&self.inner, |m| Ok(m.llama.store.by_name(&name)?.grad.clone().map(|g| NativeTensor::new(g, None))))
    }

    /// Clears the gradients of the named parameters only (an optimizer's own).
    #[napi]
    pub fn zero_grads(&self, names: Vec<String>) -> Result<()> {
        with_model_mut(&self.inner, |m| {
            for n in &names {
                m.llama.store.by_name_mut(n)?.grad = None;
            }
            Ok(())
        })
    }

    #[napi]
    pub fn zero_grad(&self) -> Result<()> {
        with_model_mut(&self.inner, |m| {
            m.llama.store.zero_grad();
            Ok(())
        })
    }

    #[napi]
    pub fn dispose(&self) {
        let model = self.inner.write().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(m) = model {
            crate::alloc::checkpointing_changed(m.gradient_checkpointing, false);
            drop(m);
            crate::alloc::release_freed_memory();
        }
    }

    #[napi(getter)]
    pub fn disposed(&self) -> bool {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).is_none()
    }
}
