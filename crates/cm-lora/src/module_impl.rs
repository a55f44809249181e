//! The hand-written `burn::module::Module` implementation of the adaptable layers.
//!
//! It delegates to the derived implementations of the base layer (without entering a submodule,
//! so the base parameters keep the paths `<path>.weight` / `<path>.bias` and the container
//! `Struct:Linear` / `Struct:Conv2d` that checkpoint loaders expect) and of the adapter list (under
//! `<path>.lora`). It exists for one reason: after its children, `visit` and `map` call the
//! traversal hooks of [`crate::session`], which is how injection, switching, merging, import and
//! export reach every adaptable layer of any module tree without model-specific code.

/// Name of the submodule that holds a layer's adapter factors.
pub(crate) const ADAPTERS_FIELD: &str = "lora";

macro_rules! adaptable_module {
    ($layer:ident, $base:ident, $adapter:ident) => {
        impl<B: Backend> crate::adapter::AdapterStore for $layer<B> {
            type Adapter = $adapter<B>;

            fn parts(&self) -> (&Vec<$adapter<B>>, &Vec<crate::AdapterMeta>) {
                (&self.adapters, &self.metas)
            }

            fn parts_mut(&mut self) -> (&mut Vec<$adapter<B>>, &mut Vec<crate::AdapterMeta>) {
                (&mut self.adapters, &mut self.metas)
            }
        }

        impl<B: Backend> burn::module::Module<B> for $layer<B> {
            type Record = (
                <$base<B> as burn::module::Module<B>>::Record,
                <Vec<$adapter<B>> as burn::module::Module<B>>::Record,
            );

            fn load_record(self, record: Self::Record) -> Self {
                let (base, adapters) = record;
                Self {
                    base: self.base.load_record(base),
                    adapters: self.adapters.load_record(adapters),
                    metas: self.metas,
                }
            }

            fn into_record(self) -> Self::Record {
                (self.base.into_record(), self.adapters.into_record())
            }

            fn num_params(&self) -> usize {
                self.base.num_params() + self.adapters.num_params()
            }

            fn visit<V: burn::module::ModuleVisitor<B>>(&self, visitor: &mut V) {
                use crate::module_impl::ADAPTERS_FIELD;
                let container = concat!("Struct:", stringify!($layer));
                self.base.visit(visitor);
                visitor.enter_module(ADAPTERS_FIELD, container);
                self.adapters.visit(visitor);
                visitor.exit_module(ADAPTERS_FIELD, container);
                crate::session::observe(self);
            }

            fn map<M: burn::module::ModuleMapper<B>>(self, mapper: &mut M) -> Self {
                use crate::module_impl::ADAPTERS_FIELD;
                let container = concat!("Struct:", stringify!($layer));
                let base = self.base.map(mapper);
                mapper.enter_module(ADAPTERS_FIELD, container);
                let adapters = self.adapters.map(mapper);
                mapper.exit_module(ADAPTERS_FIELD, container);
                crate::session::transform(Self {
                    base,
                    adapters,
                    metas: self.metas,
                })
            }

            fn collect_devices(
                &self,
                devices: burn::module::Devices<B>,
            ) -> burn::module::Devices<B> {
                let devices = self.base.collect_devices(devices);
                self.adapters.collect_devices(devices)
            }

            fn to_device(self, device: &B::Device) -> Self {
                Self {
                    base: self.base.to_device(device),
                    adapters: self.adapters.to_device(device),
                    metas: self.metas,
                }
            }

            fn fork(self, device: &B::Device) -> Self {
                Self {
                    base: self.base.fork(device),
                    adapters: self.adapters.fork(device),
                    metas: self.metas,
                }
            }
        }

        impl<B: burn::tensor::backend::AutodiffBackend> burn::module::AutodiffModule<B>
            for $layer<B>
        {
            type InnerModule = $layer<B::InnerBackend>;

            fn valid(&self) -> Self::InnerModule {
                $layer {
                    base: self.base.valid(),
                    adapters: self.adapters.valid(),
                    metas: self.metas.clone(),
                }
            }

            fn from_inner(module: Self::InnerModule) -> Self {
                $layer {
                    base: <$base<B> as burn::module::AutodiffModule<B>>::from_inner(module.base),
                    adapters: <Vec<$adapter<B>> as burn::module::AutodiffModule<B>>::from_inner(
                        module.adapters,
                    ),
                    metas: module.metas,
                }
            }
        }

        impl<B: burn::tensor::backend::AutodiffBackend> burn::module::HasAutodiffModule<B>
            for $layer<B::InnerBackend>
        {
            type TrainModule = $layer<B>;
        }

        impl<B: Backend> burn::module::ModuleDisplayDefault for $layer<B> {
            fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
                content
                    .add("base", &self.base)
                    .add("lora", &self.adapters)
                    .optional()
            }

            fn num_params(&self) -> usize {
                burn::module::Module::num_params(self)
            }
        }

        impl<B: Backend> burn::module::ModuleDisplay for $layer<B> {}

        impl<B: Backend> core::fmt::Display for $layer<B> {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                use burn::module::ModuleDisplay;
                write!(f, "{}", self.format(Default::default()))
            }
        }
    };
}

pub(crate) use adaptable_module;
