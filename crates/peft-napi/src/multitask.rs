//! Adapters composed from trained ones on a model handle (survey issue 16): AdapterFusion over
//! bottleneck adapters, MoLE over LoRAs, AdapterSoup (a weight average).
use crate::error::Result;
use crate::job::WarningsJob;
use crate::model::{with_model_mut, NativeModel};
use napi::bindgen_prelude::AsyncTask;
use napi_derive::napi;

#[napi]
impl NativeModel {
    /// Adds adapter `name` composed by `method` from the trained adapters `adapters`:
    /// "adapter-fusion" and "mole" keep copies of them frozen inside it, "adapter-soup" is
    /// their weight average. Returns warnings.
    #[napi(ts_return_type = "Promise<Array<NativeWarning>>")]
    pub fn add_composed_adapter(&self, method: String, adapters: Vec<String>, name: String) -> Result<AsyncTask<WarningsJob>> {
        let shared = self.inner.clone();
        Ok(WarningsJob::spawn(move || {
            with_model_mut(&shared, |m| {
                let names: Vec<&str> = adapters.iter().map(String::as_str).collect();
                match method.as_str() {
                    "adapter-fusion" => m.tuners.add_fusion_adapter(&mut m.llama, &names, &name),
                    "mole" => m.tuners.add_mole_adapter(&mut m.llama, &names, &name),
                    "adapter-soup" => m.tuners.add_soup_adapter(&mut m.llama, &names, &name),
                    other => Err(peft_core::error::Error::arg(
                        "method",
                        "\"adapter-fusion\", \"mole\" or \"adapter-soup\"",
                        format!("\"{other}\""),
                    )),
                }
            })
        }))
    }
}
