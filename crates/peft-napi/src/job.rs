//! Work that runs on the libuv pool (napi `AsyncTask`). A method copies what it needs
//! (Arc handles, inputs) on the JS thread and hands a closure to a job, so no task ever
//! reads a JS-owned object after returning (a terminated Worker frees those). A panic in
//! the core becomes a rejected promise instead of killing the process.
use napi::bindgen_prelude::{AsyncTask, Float32Array, Float64Array};
use napi::{Env, Error, Status, Task};
use napi_derive::napi;

use crate::model::NativeModel;
use crate::sparse::NativeFisherScores;
use crate::tensor::NativeTensor;
use crate::tokenizer::NativeTokenizer;

type Work<O> = Box<dyn FnOnce() -> napi::Result<O> + Send>;

fn run<O>(work: Option<Work<O>>) -> napi::Result<O> {
    let work = work.ok_or_else(|| Error::new(Status::GenericFailure, "task ran twice"))?;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::new(Status::GenericFailure, format!("internal error (please report): {msg}")))
        }
    }
}

macro_rules! job {
    ($name:ident, $out:ty, $js:ty, $conv:expr) => {
        pub struct $name(Option<Work<$out>>);

        impl $name {
            pub fn spawn(f: impl FnOnce() -> napi::Result<$out> + Send + 'static) -> AsyncTask<Self> {
                AsyncTask::new($name(Some(Box::new(f))))
            }
        }

        #[napi]
        impl Task for $name {
            type Output = $out;
            type JsValue = $js;

            fn compute(&mut self) -> napi::Result<$out> {
                run(self.0.take())
            }

            fn resolve(&mut self, _env: Env, out: $out) -> napi::Result<$js> {
                Ok($conv(out))
            }
        }
    };
}

fn same<T>(x: T) -> T {
    x
}

job!(UnitJob, (), (), same);
job!(NumberJob, f64, f64, same);
job!(OptionalNumberJob, Option<f64>, Option<f64>, same);
job!(StringJob, String, String, same);
job!(WarningsJob, Vec<peft_core::Warning>, Vec<crate::error::NativeWarning>, crate::error::to_js_warnings);
job!(IdsJob, Vec<Vec<u32>>, Vec<Vec<u32>>, same);
job!(Float32Job, Vec<f32>, Float32Array, Float32Array::new);
job!(Float64Job, Vec<f64>, Float64Array, Float64Array::new);
job!(TensorsJob, Vec<NativeTensor>, Vec<NativeTensor>, same);
job!(OptionalTensorJob, Option<NativeTensor>, Option<NativeTensor>, same);
job!(ModelJob, NativeModel, NativeModel, same);
job!(TokenizerJob, NativeTokenizer, NativeTokenizer, same);
job!(FisherJob, NativeFisherScores, NativeFisherScores, same);
job!(StepReportJob, peft_core::state::StepReport, crate::procedures::NativeStepReport, crate::procedures::to_js_report);
