// The kernel library's C++ route: a boxed kernel registered in place of the runtime's Python
// kernel at each (ATen operator, dispatch key) the runtime overrides (kernels_library/runtime.py).
//
// Per call it builds a key from the boxed arguments (per tensor: device, dtype, sizes, strides,
// requires_grad; ints, floats, bools, strings, None and int lists by value) and the global state
// the Python decision reads (grad mode). A key the Python side has decided to leave to PyTorch
// (and said so with `Route.remember`) is answered here: PyTorch's original kernel is called and
// a per-reason counter bumped, without Python or the GIL. Anything else (a new key, a call that
// the library serves, a tensor subclass or Python-keyed tensor, an active TorchDispatchMode, a
// call from inside a library kernel, an argument type without a key form) goes to the Python
// kernel, with the GIL, exactly as a torch.library Python kernel would be called.
//
// Launch replay: a key the library serves can also hold a plan (recorded by
// kernels_library/replay.py from a served call of that key): the tensors its forward allocated,
// the Triton launches it made (function handle, grid, block, shared memory, the parameter bytes
// as Triton's launcher packs them, with the pointer slots that point into the call's inputs or
// into those allocations) and the output views. A call with such a key is answered here: the
// tensors are allocated with at::empty_strided, the kernels launched with cuLaunchKernel on the
// current stream, the outputs pushed. The build has no CUDA headers: the driver's entry points
// are looked up in the already loaded libcuda.so.1.

#include <ATen/core/boxing/KernelFunction.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/as_strided.h>
#include <ATen/ops/empty_strided.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/SafePyObject.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/PyInterpreterHooks.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <c10/util/SmallVector.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/jit/python/pybind_utils.h>
#include <torch/csrc/utils/pybind.h>

#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

constexpr int kMaxReasons = 64;
constexpr size_t kMaxKeys = 4096;
constexpr int kMaxEntries = 256;
constexpr size_t kMaxParams = 64;
constexpr size_t kParamSlot = 8;

using Key = std::vector<int64_t>;

struct KeyHash {
  size_t operator()(const Key& key) const noexcept {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ key.size();
    for (int64_t v : key) {
      h ^= static_cast<uint64_t>(v) + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    }
    return static_cast<size_t>(h);
  }
};

// 0 outside the library; non-zero inside a library kernel or a runtime bypass (mirrors the
// Python runtime's per-thread `depth`): such calls always go to Python.
thread_local int t_depth = 0;

PyTypeObject* g_tensor_type = nullptr;
PyTypeObject* g_parameter_type = nullptr;

enum Tag : int64_t {
  kUndefined = 1,
  kTensor,
  kNone,
  kBool,
  kInt,
  kDouble,
  kString,
  kIntList,
};

// Appends the key form of one argument; false when it has none (the call goes to Python).
bool append_key(const c10::IValue& v, Key& key) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    if (!t.defined()) {
      key.push_back(kUndefined);
      return true;
    }
    c10::TensorImpl* impl = t.unsafeGetTensorImpl();
    const c10::DispatchKeySet keys = impl->key_set();
    if (keys.has(c10::DispatchKey::Python) || keys.has(c10::DispatchKey::PythonTLSSnapshot) ||
        impl->layout() != c10::kStrided || impl->has_symbolic_sizes_strides()) {
      return false;
    }
    // a tensor subclass (the Python decision looks at the exact type): not answered here
    PyObject* obj = impl->pyobj_slot()->load_pyobj();
    if (obj != nullptr && Py_TYPE(obj) != g_tensor_type && Py_TYPE(obj) != g_parameter_type) {
      return false;
    }
    const c10::Device device = impl->device();
    const auto sizes = impl->sizes();
    const auto strides = impl->strides();
    key.push_back(kTensor);
    key.push_back(static_cast<int64_t>(device.type()));
    key.push_back(device.index());
    key.push_back(static_cast<int64_t>(impl->dtype().toScalarType()));
    key.push_back(t.requires_grad());
    key.push_back(static_cast<int64_t>(sizes.size()));
    key.insert(key.end(), sizes.begin(), sizes.end());
    key.insert(key.end(), strides.begin(), strides.end());
    return true;
  }
  if (v.isNone()) {
    key.push_back(kNone);
  } else if (v.isBool()) {
    key.push_back(kBool);
    key.push_back(v.toBool());
  } else if (v.isInt()) {
    key.push_back(kInt);
    key.push_back(v.toInt());
  } else if (v.isDouble()) {
    const double d = v.toDouble();
    int64_t bits = 0;
    std::memcpy(&bits, &d, sizeof(bits));
    key.push_back(kDouble);
    key.push_back(bits);
  } else if (v.isString()) {
    const std::string& s = v.toStringRef();
    key.push_back(kString);
    key.push_back(static_cast<int64_t>(s.size()));
    for (size_t i = 0; i < s.size(); i += sizeof(int64_t)) {
      int64_t chunk = 0;
      std::memcpy(&chunk, s.data() + i, std::min(sizeof(int64_t), s.size() - i));
      key.push_back(chunk);
    }
  } else if (v.isIntList()) {
    const auto values = v.toIntList();
    key.push_back(kIntList);
    key.push_back(static_cast<int64_t>(values.size()));
    for (const int64_t x : values) {
      key.push_back(x);
    }
  } else {
    return false;
  }
  return true;
}

// The key of a call, or false when the call has none.
bool call_key(const torch::jit::Stack& stack, size_t num_arguments, Key& key) {
  if (t_depth != 0 || c10::impl::TorchDispatchModeTLS::stack_len() > 0 ||
      c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::Python)) {
    return false;
  }
  key.clear();
  key.push_back(c10::GradMode::is_enabled());
  const size_t first = stack.size() - num_arguments;
  for (size_t i = first; i < stack.size(); ++i) {
    if (!append_key(stack[i], key)) {
      return false;
    }
  }
  return true;
}

// ------------------------------------------------------------------ the CUDA driver

// The few driver entry points replay needs, with their prototypes restated (cuda.h is not
// available to this build): CUresult is an int, handles are opaque pointers.
struct Driver {
  using LaunchKernel = int (*)(void*, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                               unsigned, void*, void**, void**);
  using GetErrorString = int (*)(int, const char**);
  using FuncGetParamInfo = int (*)(void*, size_t, size_t*, size_t*);
  using CtxGetCurrent = int (*)(void**);
  using CtxSetCurrent = int (*)(void*);
  using AotiCurrentStream = int (*)(int32_t, void**);

  LaunchKernel launch_kernel = nullptr;
  GetErrorString get_error_string = nullptr;
  FuncGetParamInfo func_get_param_info = nullptr;
  CtxGetCurrent ctx_get_current = nullptr;
  CtxSetCurrent ctx_set_current = nullptr;
  AotiCurrentStream aoti_current_stream = nullptr;  // without c10::Stream::native_handle
  std::string problem;  // why replay cannot run here ("" when it can)
};

// The current stream's handle (a cudaStream_t): c10::Stream::native_handle (device-generic c10,
// torch >= 2.11) where this torch's headers have it; otherwise torch's AOTInductor C shim
// aoti_torch_get_current_cuda_stream, a stable C function of libtorch_cuda.so.
template <typename S, typename = void>
struct HasNativeHandle : std::false_type {};
template <typename S>
struct HasNativeHandle<S, std::void_t<decltype(std::declval<const S&>().native_handle())>>
    : std::true_type {};
constexpr bool kNativeHandle = HasNativeHandle<c10::Stream>::value;

template <typename S = c10::Stream>
void* current_stream(const Driver& driver, c10::DeviceIndex index) {
  if constexpr (HasNativeHandle<S>::value) {
    const S stream = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)
                         ->getStream(c10::Device(c10::DeviceType::CUDA, index));
    return stream.native_handle();
  } else {
    void* stream = nullptr;
    TORCH_CHECK(driver.aoti_current_stream(index, &stream) == 0,
                "forge route: aoti_torch_get_current_cuda_stream failed for device ", index);
    return stream;
  }
}

template <typename F>
F symbol(void* library, const char* name, std::string& problem) {
  void* found = dlsym(library, name);
  if (found == nullptr && problem.empty()) {
    problem = std::string("libcuda.so.1 has no ") + name;
  }
  return reinterpret_cast<F>(found);
}

// Looked up when a plan is installed (each plan keeps its copy): by then CUDA is initialised,
// so the process has loaded libcuda.so.1, and RTLD_NOLOAD never loads a second copy.
Driver load_driver() {
  Driver d;
  void* library = dlopen("libcuda.so.1", RTLD_NOLOAD | RTLD_LAZY);
  if (library == nullptr) {
    d.problem = "libcuda.so.1 is not loaded in this process";
    return d;
  }
  d.launch_kernel = symbol<Driver::LaunchKernel>(library, "cuLaunchKernel", d.problem);
  d.get_error_string = symbol<Driver::GetErrorString>(library, "cuGetErrorString", d.problem);
  // CUDA >= 12.4: used to check each recorded parameter's size against the kernel's
  d.func_get_param_info =
      symbol<Driver::FuncGetParamInfo>(library, "cuFuncGetParamInfo", d.problem);
  d.ctx_get_current = symbol<Driver::CtxGetCurrent>(library, "cuCtxGetCurrent", d.problem);
  d.ctx_set_current = symbol<Driver::CtxSetCurrent>(library, "cuCtxSetCurrent", d.problem);
  dlclose(library);  // NOLOAD took a reference; the library stays loaded
  if (!kNativeHandle && d.problem.empty()) {
    void* torch_cuda = dlopen("libtorch_cuda.so", RTLD_NOLOAD | RTLD_LAZY);
    if (torch_cuda == nullptr) {
      d.problem = "libtorch_cuda.so is not loaded in this process";
      return d;
    }
    d.aoti_current_stream = symbol<Driver::AotiCurrentStream>(
        torch_cuda, "aoti_torch_get_current_cuda_stream", d.problem);
    dlclose(torch_cuda);
  }
  return d;
}

std::string driver_error(const Driver& driver, int result) {
  const char* text = nullptr;
  if (driver.get_error_string != nullptr) {
    driver.get_error_string(result, &text);
  }
  return std::string(text != nullptr ? text : "unknown error") + " (CUresult " +
      std::to_string(result) + ")";
}

// ------------------------------------------------------------------ plans

enum Source : int { kInput = 0, kAllocation = 1 };

// A parameter slot that holds a pointer: the base of an input (an argument of the call, by its
// index in the schema) or of a tensor the plan allocates, plus a byte offset. `aligned`: the
// recorded pointer was 16-byte aligned, which Triton specialised the kernel on.
struct PointerSlot {
  uint32_t param;
  Source source;
  uint32_t index;
  int64_t offset;
  bool aligned;
};

struct Launch {
  std::string name;
  void* function;
  std::array<unsigned, 3> grid;
  unsigned block;
  unsigned shared;
  std::string params;  // kParamSlot bytes per parameter, as Triton's launcher packs them
  std::vector<PointerSlot> pointers;
};

struct Allocation {
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  c10::ScalarType dtype;
};

struct Output {
  uint32_t allocation;
  bool whole;  // the allocation itself, else the view below
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  int64_t storage_offset;
};

struct Plan {
  Driver driver;
  c10::DeviceIndex device;
  void* context;
  bool guard;  // several GPUs: make the plan's device current for the replay
  int entry;
  std::vector<Allocation> allocations;
  std::vector<Launch> launches;
  std::vector<Output> outputs;
};

uint64_t input_address(const torch::jit::Stack& stack, size_t first, const PointerSlot& slot) {
  const c10::IValue& value = stack[first + slot.index];
  if (!value.isTensor()) {
    return 0;
  }
  return reinterpret_cast<uint64_t>(value.toTensor().data_ptr()) + slot.offset;
}

// False when an input pointer has lost the 16-byte alignment the kernel was specialised on (the
// Python kernel serves that call, through Triton, which picks the matching kernel).
bool inputs_fit(const Plan& plan, const torch::jit::Stack& stack, size_t first) {
  for (const Launch& launch : plan.launches) {
    for (const PointerSlot& slot : launch.pointers) {
      if (slot.source == kInput) {
        const uint64_t address = input_address(stack, first, slot);
        if (address == 0 || (slot.aligned && address % 16 != 0)) {
          return false;
        }
      }
    }
  }
  return true;
}

void check_driver(const Driver& driver, int result, const char* what, const std::string& kernel) {
  TORCH_CHECK(
      result == 0,
      "forge route: ",
      what,
      " failed replaying the library kernel ",
      kernel,
      ": ",
      driver_error(driver, result),
      " (kl.enable(..., replay=False) or FORGE_KERNELS_REPLAY=0 turns replay off)");
}

void launch(const Driver& driver, const Launch& launch, const torch::jit::Stack& stack,
            size_t first, const c10::SmallVector<at::Tensor, 4>& buffers, void* stream) {
  if (launch.grid[0] == 0 || launch.grid[1] == 0 || launch.grid[2] == 0) {
    return;  // as Triton's launcher: an empty grid launches nothing
  }
  alignas(16) unsigned char storage[kMaxParams * kParamSlot];
  void* params[kMaxParams];
  const size_t count = launch.params.size() / kParamSlot;
  std::memcpy(storage, launch.params.data(), launch.params.size());
  for (const PointerSlot& slot : launch.pointers) {
    const uint64_t address = slot.source == kInput
        ? input_address(stack, first, slot)
        : reinterpret_cast<uint64_t>(buffers[slot.index].data_ptr()) + slot.offset;
    std::memcpy(storage + slot.param * kParamSlot, &address, sizeof(address));
  }
  for (size_t i = 0; i < count; ++i) {
    params[i] = storage + i * kParamSlot;
  }
  check_driver(
      driver,
      driver.launch_kernel(launch.function, launch.grid[0], launch.grid[1], launch.grid[2],
                           launch.block, 1, 1, launch.shared, stream, params, nullptr),
      "cuLaunchKernel", launch.name);
}

// The call answered from its plan: false (nothing done) when its inputs do not fit the plan.
bool replay(const Plan& plan, const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t num_arguments = op.schema().arguments().size();
  const size_t first = stack->size() - num_arguments;
  if (!inputs_fit(plan, *stack, first)) {
    return false;
  }
  const c10::Device device(c10::DeviceType::CUDA, plan.device);
  c10::OptionalDeviceGuard guard;
  if (plan.guard) {
    guard.reset_device(device);
  }
  void* context = nullptr;
  if (plan.driver.ctx_get_current(&context) == 0 && context == nullptr) {
    // a thread that has not used CUDA yet: the primary context the plan was recorded in
    check_driver(plan.driver, plan.driver.ctx_set_current(plan.context), "cuCtxSetCurrent",
                 plan.launches[0].name);
  }
  c10::SmallVector<at::Tensor, 4> buffers;
  for (const Allocation& a : plan.allocations) {
    buffers.push_back(
        at::empty_strided(a.sizes, a.strides, at::TensorOptions().dtype(a.dtype).device(device)));
  }
  void* stream = current_stream(plan.driver, plan.device);
  for (const Launch& l : plan.launches) {
    launch(plan.driver, l, *stack, first, buffers, stream);
  }
  torch::jit::drop(*stack, num_arguments);
  for (const Output& o : plan.outputs) {
    const at::Tensor& buffer = buffers[o.allocation];
    stack->emplace_back(
        o.whole ? buffer : at::as_strided(buffer, o.sizes, o.strides, o.storage_offset));
  }
  return true;
}

enum Mark : uint8_t { kUnseen = 0, kServedOnce, kNotReplayed };

// What is known of a key: decided for PyTorch (reason >= 0), served from a plan, or (neither)
// whether the library has served it once or will not replay it.
struct Decision {
  int reason = -1;
  std::shared_ptr<const Plan> plan;
  Mark mark = kUnseen;
};

// The non-zero counters of `counts` by index, each zeroed as it is read.
template <size_t N>
std::vector<std::pair<int, int64_t>> drained(std::array<std::atomic<int64_t>, N>& counts) {
  std::vector<std::pair<int, int64_t>> out;
  for (size_t i = 0; i < N; ++i) {
    const int64_t n = counts[i].exchange(0, std::memory_order_relaxed);
    if (n != 0) {
      out.emplace_back(static_cast<int>(i), n);
    }
  }
  return out;
}

bool tensor_type(const c10::TypePtr& type) {
  return type->isSubtypeOf(*c10::OptionalType::ofTensor());
}

struct RouteState {
  RouteState(c10::SafeKernelFunction original, PyObject* python_kernel,
             const c10::FunctionSchema& schema)
      : original(std::move(original)),
        python_kernel(python_kernel, c10::impl::getGlobalPyInterpreter()),
        tensor_returns(schema.returns().size()) {
    for (const auto& argument : schema.arguments()) {
      tensor_arguments.push_back(tensor_type(argument.type()));
    }
    for (const auto& r : schema.returns()) {
      if (r.type()->kind() != c10::TypeKind::TensorType) {
        tensor_returns = 0;
      }
    }
  }

  c10::SafeKernelFunction original;
  c10::SafePyObject python_kernel;
  std::vector<bool> tensor_arguments;
  size_t tensor_returns;  // the schema's returns when all are tensors, else 0
  std::shared_mutex mutex;
  std::unordered_map<Key, Decision, KeyHash> decided;
  std::array<std::atomic<int64_t>, kMaxReasons> counts{};
  std::array<std::atomic<int64_t>, kMaxEntries> replays{};
};

// The call whose key the running Python kernel may remember (per thread; nested calls save and
// restore it).
struct Pending {
  RouteState* state;
  Key key;
};
thread_local Pending* t_pending = nullptr;

struct PendingScope {
  explicit PendingScope(Pending* pending) : saved(t_pending) { t_pending = pending; }
  ~PendingScope() { t_pending = saved; }
  Pending* saved;
};

void call_python(
    RouteState& state,
    const c10::OperatorHandle& op,
    torch::jit::Stack* stack,
    Pending* pending) {
  const auto& schema = op.schema();
  const size_t num_arguments = schema.arguments().size();
  auto arguments = torch::jit::pop(*stack, num_arguments);
  PendingScope scope(pending);
  py::gil_scoped_acquire gil;
  py::list positional;
  py::dict kwargs;
  for (size_t i = 0; i < num_arguments; ++i) {
    const auto& argument = schema.arguments()[i];
    py::object value = torch::jit::toPyObject(std::move(arguments[i]));
    if (argument.kwarg_only()) {
      kwargs[py::str(argument.name())] = value;
    } else {
      positional.append(value);
    }
  }
  PyObject* kernel = state.python_kernel.ptr(c10::impl::getGlobalPyInterpreter());
  py::tuple args(positional);
  PyObject* result = PyObject_Call(kernel, args.ptr(), kwargs.ptr());
  if (result == nullptr) {
    throw py::error_already_set();
  }
  py::object out = py::reinterpret_steal<py::object>(result);
  const auto& returns = schema.returns();
  if (returns.size() == 1) {
    stack->push_back(torch::jit::toIValue(out, returns[0].real_type(), std::nullopt));
    return;
  }
  py::tuple outs = py::cast<py::tuple>(out);
  TORCH_CHECK(
      outs.size() == returns.size(),
      "forge route: the Python kernel returned ",
      outs.size(),
      " values for ",
      returns.size(),
      " returns");
  for (size_t i = 0; i < returns.size(); ++i) {
    stack->push_back(torch::jit::toIValue(outs[i], returns[i].real_type(), std::nullopt));
  }
}

struct RouteKernel final : c10::OperatorKernel {
  explicit RouteKernel(std::shared_ptr<RouteState> state) : state(std::move(state)) {}

  void operator()(
      const c10::OperatorHandle& op,
      c10::DispatchKeySet keyset,
      torch::jit::Stack* stack) {
    thread_local Key key;
    const size_t num_arguments = op.schema().arguments().size();
    if (!call_key(*stack, num_arguments, key)) {
      call_python(*state, op, stack, nullptr);
      return;
    }
    int reason = -1;
    std::shared_ptr<const Plan> plan;
    {
      std::shared_lock<std::shared_mutex> lock(state->mutex);
      auto found = state->decided.find(key);
      if (found != state->decided.end()) {
        reason = found->second.reason;
        plan = found->second.plan;
      }
    }
    if (reason >= 0) {
      state->counts[reason].fetch_add(1, std::memory_order_relaxed);
      state->original.callBoxed(op, keyset, stack);
      return;
    }
    if (plan != nullptr) {
      if (replay(*plan, op, stack)) {
        state->replays[plan->entry].fetch_add(1, std::memory_order_relaxed);
      } else {
        call_python(*state, op, stack, nullptr);
      }
      return;
    }
    Pending pending{state.get(), key};
    call_python(*state, op, stack, &pending);
  }

  std::shared_ptr<RouteState> state;
};

// The decision of the call whose Python kernel is running on this thread, created when the key
// is new (the table starts over when full); the caller holds the state's lock.
Decision& pending_decision(Pending& pending) {
  RouteState& state = *pending.state;
  auto found = state.decided.find(pending.key);
  if (found != state.decided.end()) {
    return found->second;
  }
  if (state.decided.size() >= kMaxKeys) {
    state.decided.clear();
  }
  return state.decided[pending.key];
}

// Remembers the key of the call whose Python kernel is running on this thread as decided for
// PyTorch (reason id `reason`); false when that call has no key (or it was already remembered).
bool remember(int reason) {
  TORCH_CHECK(reason >= 0 && reason < kMaxReasons, "forge route: reason id out of range");
  Pending* pending = t_pending;
  if (pending == nullptr) {
    return false;
  }
  std::unique_lock<std::shared_mutex> lock(pending->state->mutex);
  pending_decision(*pending) = Decision{reason, nullptr, kUnseen};
  t_pending = nullptr;
  return true;
}

// The running call is served by the library: true when its key has been served before and has
// neither a plan nor a refusal (the recorder records this call); the first time, false.
bool served() {
  Pending* pending = t_pending;
  if (pending == nullptr) {
    return false;
  }
  std::unique_lock<std::shared_mutex> lock(pending->state->mutex);
  Decision& decision = pending_decision(*pending);
  if (decision.reason >= 0 || decision.plan != nullptr) {
    return false;
  }
  if (decision.mark == kUnseen) {
    decision.mark = kServedOnce;
    return false;
  }
  return decision.mark == kServedOnce;
}

// The running call's key will not be replayed (the recorder's reason is counted in Python).
bool refuse() {
  Pending* pending = t_pending;
  if (pending == nullptr) {
    return false;
  }
  std::unique_lock<std::shared_mutex> lock(pending->state->mutex);
  pending_decision(*pending) = Decision{-1, nullptr, kNotReplayed};
  return true;
}

using AllocationSpec = std::tuple<std::vector<int64_t>, std::vector<int64_t>, c10::ScalarType>;
// (parameter, source, index, byte offset, 16-byte aligned)
using PointerSpec = std::tuple<uint32_t, int, uint32_t, int64_t, bool>;
// (kernel name, CUfunction, grid, threads per block, shared memory bytes, parameter bytes,
//  parameter sizes, pointer slots, trailing scratch pointers)
using LaunchSpec = std::tuple<std::string, uint64_t, std::vector<int64_t>, int64_t, int64_t,
                              std::string, std::vector<int64_t>, std::vector<PointerSpec>, int64_t>;
// (allocation, whole, sizes, strides, storage offset)
using OutputSpec =
    std::tuple<uint32_t, bool, std::vector<int64_t>, std::vector<int64_t>, int64_t>;

// Why the kernel's own parameter list (cuFuncGetParamInfo) differs from the recorded one. The
// launcher appends `scratch` scratch pointers whether or not the kernel declares them (the
// driver reads as many parameters as the kernel has), so those may be missing.
std::string parameter_mismatch(const Driver& driver, const Launch& launch,
                               const std::vector<int64_t>& sizes, size_t scratch) {
  for (size_t i = 0; i <= sizes.size(); ++i) {
    size_t offset = 0;
    size_t size = 0;
    const int result = driver.func_get_param_info(launch.function, i, &offset, &size);
    if (i == sizes.size()) {
      return result == 0 ? "kernel " + launch.name + " takes more parameters than the " +
                               std::to_string(sizes.size()) + " the recorded launch packs"
                         : "";
    }
    if (result != 0 && i + scratch >= sizes.size()) {
      return "";
    }
    if (result != 0) {
      return "kernel " + launch.name + " has no parameter " + std::to_string(i) + " (" +
          driver_error(driver, result) + "): the recorded launch packs " +
          std::to_string(sizes.size());
    }
    if (static_cast<int64_t>(size) != sizes[i]) {
      return "kernel " + launch.name + "'s parameter " + std::to_string(i) + " is " +
          std::to_string(size) + " bytes, the recorded launch packs " + std::to_string(sizes[i]);
    }
  }
  return "";
}

// The launch of a spec, or why it cannot be replayed ("" in `why` when it can).
Launch make_launch(const RouteState& state, const Driver& driver, const LaunchSpec& spec,
                   size_t allocations, std::string& why) {
  const auto& [name, function, grid, block, shared, params, sizes, pointers, scratch] = spec;
  Launch launch{name, reinterpret_cast<void*>(function), {0, 0, 0}, 0, 0, params, {}};
  const bool grid_ok = grid.size() == 3 &&
      std::all_of(grid.begin(), grid.end(), [](int64_t g) { return g >= 0 && g < (1LL << 31); });
  if (function == 0 || !grid_ok || block <= 0 || block > 1024 || shared < 0 ||
      sizes.size() > kMaxParams || params.size() != sizes.size() * kParamSlot || scratch < 0 ||
      static_cast<size_t>(scratch) > sizes.size()) {
    why = "the recorded launch of " + name + " is malformed";
    return launch;
  }
  for (size_t i = 0; i < 3; ++i) {
    launch.grid[i] = static_cast<unsigned>(grid[i]);
  }
  launch.block = static_cast<unsigned>(block);
  launch.shared = static_cast<unsigned>(shared);
  for (const auto& [param, source, index, offset, aligned] : pointers) {
    const bool known = source == kInput
        ? index < state.tensor_arguments.size() && state.tensor_arguments[index]
        : source == kAllocation && index < allocations;
    if (param >= sizes.size() || sizes[param] != kParamSlot || !known) {
      why = "a pointer slot of the recorded launch of " + name + " is malformed";
      return launch;
    }
    launch.pointers.push_back({param, static_cast<Source>(source), index, offset, aligned});
  }
  why = parameter_mismatch(driver, launch, sizes, static_cast<size_t>(scratch));
  return launch;
}

// The plan of the recorded call, or why it cannot be replayed ("" in `why` when it can).
std::shared_ptr<const Plan> make_plan(const RouteState& state, int device, int entry, bool guard,
                                      const std::vector<AllocationSpec>& allocations,
                                      const std::vector<LaunchSpec>& launches,
                                      const std::vector<OutputSpec>& outputs, std::string& why) {
  auto plan = std::make_shared<Plan>();
  plan->driver = load_driver();
  why = plan->driver.problem;
  if (!why.empty()) {
    return nullptr;
  }
  plan->device = static_cast<c10::DeviceIndex>(device);
  plan->guard = guard;
  plan->entry = entry;
  if (plan->driver.ctx_get_current(&plan->context) != 0 || plan->context == nullptr) {
    why = "no current CUDA context while recording";
    return nullptr;
  }
  if (entry < 0 || entry >= kMaxEntries || launches.empty()) {
    why = entry < 0 || entry >= kMaxEntries ? "entry id out of range" : "no launch recorded";
    return nullptr;
  }
  if (state.tensor_returns == 0 || outputs.size() != state.tensor_returns) {
    why = "the operator's returns are not the recorded outputs";
    return nullptr;
  }
  for (const auto& [sizes, strides, dtype] : allocations) {
    plan->allocations.push_back({sizes, strides, dtype});
  }
  for (const auto& [allocation, whole, sizes, strides, offset] : outputs) {
    if (allocation >= allocations.size()) {
      why = "an output of the recorded call is malformed";
      return nullptr;
    }
    plan->outputs.push_back({allocation, whole, sizes, strides, offset});
  }
  for (const LaunchSpec& spec : launches) {
    plan->launches.push_back(make_launch(state, plan->driver, spec, allocations.size(), why));
    if (!why.empty()) {
      return nullptr;
    }
  }
  return plan;
}

// Installs the plan of the call whose Python kernel is running on this thread (the recorder's
// last step); returns "" or why it cannot be replayed (the key is then refused).
std::string install(int device, int entry, bool guard,
                    const std::vector<AllocationSpec>& allocations,
                    const std::vector<LaunchSpec>& launches,
                    const std::vector<OutputSpec>& outputs) {
  Pending* pending = t_pending;
  TORCH_CHECK(pending != nullptr, "forge route: install() outside a call of the C++ route");
  std::string why;
  auto plan = make_plan(*pending->state, device, entry, guard, allocations, launches, outputs, why);
  std::unique_lock<std::shared_mutex> lock(pending->state->mutex);
  pending_decision(*pending) =
      why.empty() ? Decision{-1, std::move(plan), kUnseen} : Decision{-1, nullptr, kNotReplayed};
  return why;
}

// One registration, as Python holds it.
class Route {
 public:
  Route(const std::string& name, const std::string& dispatch_key, py::object python_kernel,
        const std::string& debug) {
    TORCH_CHECK(g_tensor_type != nullptr, "forge route: call init() first");
    auto& dispatcher = c10::Dispatcher::singleton();
    const auto separator = name.find('.');
    const std::string op_name = name.substr(0, separator);
    const std::string overload = separator == std::string::npos ? "" : name.substr(separator + 1);
    const auto handle = dispatcher.findSchemaOrThrow(op_name.c_str(), overload.c_str());
    const c10::DispatchKey key = c10::parseDispatchKey(dispatch_key);
    state_ = std::make_shared<RouteState>(handle.getComputedKernelForDispatchKey(key),
                                          python_kernel.release().ptr(), handle.schema());
    // the dispatcher warns that an ATen kernel is being overridden: as a Python warning
    torch::PyWarningHandler warnings;
    registration_.emplace(dispatcher.registerImpl(
        c10::OperatorName(op_name, overload),
        key,
        c10::KernelFunction::makeFromBoxedFunctor(std::make_unique<RouteKernel>(state_)),
        std::nullopt,
        nullptr,
        debug));
  }

  // The counts since the last drain, by reason id (zeroed).
  std::vector<std::pair<int, int64_t>> drain() { return drained(state_->counts); }

  // The replays since the last drain, by entry id (zeroed).
  std::vector<std::pair<int, int64_t>> drain_replays() { return drained(state_->replays); }

  // How many keys are decided for PyTorch / served from a plan / not replayed.
  size_t known() { return count([](const Decision& d) { return d.reason >= 0; }); }
  size_t plans() { return count([](const Decision& d) { return d.plan != nullptr; }); }
  size_t not_replayed() { return count([](const Decision& d) { return d.mark == kNotReplayed; }); }

  // Forgets every key: decisions, plans and refusals.
  void forget() {
    std::unique_lock<std::shared_mutex> lock(state_->mutex);
    state_->decided.clear();
  }

  void unregister() {
    registration_.reset();
    forget();
  }

  bool registered() const { return registration_.has_value(); }

 private:
  template <typename Predicate>
  size_t count(Predicate predicate) {
    std::shared_lock<std::shared_mutex> lock(state_->mutex);
    return std::count_if(state_->decided.begin(), state_->decided.end(),
                         [&](const auto& item) { return predicate(item.second); });
  }

  std::shared_ptr<RouteState> state_;
  std::optional<c10::RegistrationHandleRAII> registration_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The kernel library's C++ route: remembered fallbacks and launch replay";
  m.attr("MAX_REASONS") = kMaxReasons;
  m.attr("MAX_KEYS") = kMaxKeys;
  m.attr("MAX_ENTRIES") = kMaxEntries;
  m.attr("MAX_PARAMS") = kMaxParams;
  m.def(
      "init",
      [](py::object tensor_type, py::object parameter_type) {
        g_tensor_type = reinterpret_cast<PyTypeObject*>(tensor_type.release().ptr());
        g_parameter_type = reinterpret_cast<PyTypeObject*>(parameter_type.release().ptr());
      },
      "The exact Python types of plain tensors (torch.Tensor, torch.nn.Parameter)");
  m.def(
      "set_depth",
      [](int depth) {
        const int previous = t_depth;
        t_depth = depth;
        return previous;
      },
      "This thread's re-entrancy depth (mirrors the runtime's); returns the previous one");
  m.def("remember", &remember, py::arg("reason"),
        "Remember the running call's key as decided for PyTorch with this reason id");
  m.def("served", &served,
        "The running call is served: whether its key was served before (record it now)");
  m.def("refuse", &refuse, "The running call's key will not be replayed");
  m.def("install", &install, py::arg("device"), py::arg("entry"), py::arg("guard"),
        py::arg("allocations"), py::arg("launches"), py::arg("outputs"),
        "Install the running call's plan; returns '' or why it cannot be replayed");
  m.def(
      "driver_problem", [] { return load_driver().problem; },
      "Why replay cannot use the CUDA driver in this process now ('' when it can)");
  m.attr("STREAM_SOURCE") =
      kNativeHandle ? "c10::Stream::native_handle" : "aoti_torch_get_current_cuda_stream";
  m.def(
      "current_stream",
      [](int device) {
        const Driver driver = load_driver();
        TORCH_CHECK(driver.problem.empty(), "forge route: ", driver.problem);
        return reinterpret_cast<uint64_t>(
            current_stream(driver, static_cast<c10::DeviceIndex>(device)));
      },
      py::arg("device"), "The current stream's handle on a CUDA device, as replay launches on");
  py::class_<Route>(m, "Route")
      .def(py::init<const std::string&, const std::string&, py::object, const std::string&>(),
           py::arg("name"), py::arg("dispatch_key"), py::arg("python_kernel"), py::arg("debug"))
      .def("drain", &Route::drain)
      .def("drain_replays", &Route::drain_replays)
      .def("known", &Route::known)
      .def("plans", &Route::plans)
      .def("not_replayed", &Route::not_replayed)
      .def("forget", &Route::forget)
      .def("unregister", &Route::unregister)
      .def_property_readonly("registered", &Route::registered);
}
