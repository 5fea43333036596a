//! Generation, whole or streamed token by token, cancellable between steps.
use crate::error::Result;
use crate::job::IdsJob;
use crate::model::{with_model, NativeModel};
use napi::bindgen_prelude::AsyncTask;
use napi::bindgen_prelude::Unknown;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::Status;
use napi_derive::napi;
use peft_core::model::generate::{generate, Flow, GenerateOptions};
use peft_core::model::sampling::SamplingOptions;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set from JS (an AbortSignal's listener); long native work checks it between steps.
#[napi]
pub struct NativeAbort {
    pub(crate) flag: Arc<AtomicBool>,
}

#[napi]
impl NativeAbort {
    #[napi(constructor)]
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        NativeAbort { flag: Arc::new(AtomicBool::new(false)) }
    }

    #[napi]
    pub fn abort(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    #[napi(getter)]
    pub fn aborted(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

#[napi(object)]
pub struct GenerateArgs {
    pub max_new_tokens: u32,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: u32,
    pub top_p: f64,
    pub seed: i64,
    pub stop_token_ids: Vec<u32>,
    /// One adapter (or `__base__`) per row, PEFT's `adapter_names=`.
    pub adapter_names: Option<Vec<String>>,
}

/// Per step: the new token of each row, -1 for rows already finished.
pub type StepCallback = ThreadsafeFunction<Vec<i32>, Unknown<'static>, Vec<i32>, Status, false>;

#[napi]
impl NativeModel {
    #[napi(ts_return_type = "Promise<Array<Array<number>>>")]
    pub fn generate(
        &self,
        env: napi::Env,
        prompts: Vec<Vec<u32>>,
        args: GenerateArgs,
        on_step: Option<StepCallback>,
        abort: Option<&NativeAbort>,
    ) -> Result<AsyncTask<IdsJob>> {
        let opts = GenerateOptions {
            max_new_tokens: args.max_new_tokens as usize,
            sampling: SamplingOptions {
                do_sample: args.do_sample,
                temperature: args.temperature,
                top_k: args.top_k as usize,
                top_p: args.top_p,
            },
            seed: args.seed as u64,
            stop_token_ids: args.stop_token_ids,
        };
        let adapter_names = args.adapter_names;
        // The caller's AbortSignal, or a flag of our own: either is set when the process exits.
        let flag = abort.map(|a| a.flag.clone()).unwrap_or_default();
        crate::cancel::register(&env, &flag);
        let shared = self.inner.clone();
        Ok(IdsJob::spawn(move || {
            with_model(&shared, |m| {
                // The model's lock is taken here, before the work moves to a pool thread: a pool
                // thread waiting for a lock that a writer (merge, load) holds while it waits for
                // the pool would never be released. On the pool, each decode step's few hundred
                // small parallel loops start without a sleep and a wake-up (`threads::on_pool`).
                peft_core::threads::on_pool(|| {
                    let ctx = m.ctx_with_rows(true, None, adapter_names.as_deref())?;
                    let mut step = |toks: &[Option<u32>]| {
                        if let Some(cb) = &on_step {
                            let row: Vec<i32> = toks.iter().map(|t| t.map_or(-1, |x| x as i32)).collect();
                            cb.call(row, ThreadsafeFunctionCallMode::Blocking);
                        }
                        if flag.load(Ordering::SeqCst) {
                            Flow::Stop
                        } else {
                            Flow::Continue
                        }
                    };
                    generate(&m.llama, &ctx, &prompts, &opts, &mut step)
                })
            })
        }))
    }
}
