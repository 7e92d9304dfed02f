//! The optimiser.

use tch::Tensor;

use crate::model::Model;

/// Adam (Kingma & Ba), written out so its state can be checkpointed with the weights.
pub struct Adam {
    pub(super) params: Vec<(String, Tensor)>,
    pub(super) m: Vec<Tensor>,
    pub(super) v: Vec<Tensor>,
    pub(super) t: u64,
}

impl Adam {
    const B1: f64 = 0.9;
    const B2: f64 = 0.999;
    const EPS: f64 = 1e-8;

    /// Zeroed moments for every trainable weight of `model`.
    pub fn new(model: &Model) -> Self {
        let mut params: Vec<(String, Tensor)> = model
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params.iter().map(|(_, p)| p.zeros_like()).collect();
        let v = params.iter().map(|(_, p)| p.zeros_like()).collect();
        Self { params, m, v, t: 0 }
    }

    /// Clears the gradients before the next `backward`.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update of every weight from its gradient, at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.t += 1;
        let c1 = 1.0 - Self::B1.powi(self.t as i32);
        let c2 = 1.0 - Self::B2.powi(self.t as i32);
        tch::no_grad(|| {
            for ((_, p), (m, v)) in self
                .params
                .iter_mut()
                .zip(self.m.iter_mut().zip(self.v.iter_mut()))
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let _ = m.g_mul_scalar_(Self::B1).g_add_(&(&g * (1.0 - Self::B1)));
                let _ = v
                    .g_mul_scalar_(Self::B2)
                    .g_add_(&(&g * &g * (1.0 - Self::B2)));
                let update = (&*m / c1) / ((&*v / c2).sqrt() + Self::EPS) * lr;
                let _ = p.g_sub_(&update);
            }
        });
    }
}
