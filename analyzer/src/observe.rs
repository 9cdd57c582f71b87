//! What one run of one instruction produced, as owned, serializable data.
//!
//! Engines turn their events (Unicorn hooks, KVM exits) into an
//! [`Observation`] at once; the classifier is a pure function over these.

pub use crate::page::Page;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Privilege level the run *started* at, from the guest's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side {
    /// The guest's supervisor (CPL 0, or the compressed ring under ring compression).
    Supervisor,
    /// The guest's user (CPL 3).
    User,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Supervisor, Side::User];
    pub fn name(self) -> &'static str {
        match self {
            Side::Supervisor => "cpl0",
            Side::User => "cpl3",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How control arrived at a harness entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransferKind {
    /// A software interrupt (INT n, INT3, INTO, INT1) through IDT vector n.
    Interrupt(u8),
    /// SYSCALL to the LSTAR/CSTAR entry.
    Syscall,
    /// SYSENTER to the SYSENTER_EIP entry.
    Sysenter,
    /// A far CALL or JMP through the harness's call gate.
    CallGate,
}

/// The result of executing the instruction under test (pg-model section 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The instruction retired and the sentinel was reached at `rip`
    /// (the expected sentinel right after it, or a landing pad in the code page).
    Completed { rip: u64, at_sentinel: bool },
    /// The instruction raised an exception itself.
    Trap {
        vector: u8,
        /// `None` where the engine does not report it (Unicorn).
        error_code: Option<u32>,
        /// RIP of the faulting instruction as the engine reports it.
        rip: u64,
        /// The linear address a #PF reports (CR2), where the engine
        /// reports it; `None` for every other vector.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<u64>,
    },
    /// Control reached a supervisor entry point the harness installed.
    /// `cpl` is the CPL at arrival, `None` where the engine reports the event
    /// without delivering it (Unicorn does not deliver through the IDT).
    Transfer {
        kind: TransferKind,
        rip: u64,
        cpl: Option<u8>,
    },
    /// Triple fault / shutdown.
    Shutdown,
    /// The run neither completed nor trapped within the limits.
    Hang,
    /// The engine failed; the text says what failed.
    EngineError(String),
    /// The engine cannot run this case at all (for example real mode on an engine without it).
    NotSupported(String),
}

impl Outcome {
    /// A trap or transfer: the supervisor (a VMM) would receive control.
    pub fn is_trap_like(&self) -> bool {
        matches!(self, Outcome::Trap { .. } | Outcome::Transfer { .. })
    }
    pub fn is_completed(&self) -> bool {
        matches!(self, Outcome::Completed { .. })
    }
    /// An engine-level result that is never turned into a verdict.
    pub fn is_engine_level(&self) -> bool {
        matches!(
            self,
            Outcome::Shutdown | Outcome::Hang | Outcome::EngineError(_) | Outcome::NotSupported(_)
        )
    }
    /// A memory trap (pg-model section 2): #PF, or #SS (stack limit or
    /// non-canonical stack address). #GP is not counted as a memory trap:
    /// Unicorn reports no error code to tell a limit check from a privilege
    /// check, and the harness keeps every operand inside its own pages, so a
    /// limit or canonical #GP is not expected in the sampled states.
    pub fn is_memory_trap(&self) -> bool {
        matches!(
            self,
            Outcome::Trap {
                vector: 14 | 12,
                ..
            }
        )
    }
    /// [`Outcome::short`] with the #PF address where the engine reports
    /// it (`#PF(0x4) at 0x0`), for `explain`.
    pub fn long(&self) -> String {
        match self {
            Outcome::Trap {
                address: Some(a), ..
            } => format!("{} at {a:#x}", self.short()),
            _ => self.short(),
        }
    }

    /// Short text for reports: `completed`, `#GP(0)`, `#UD`, `int 0x80 -> cpl0`, ...
    /// Whether two engines' outcomes of one state agree: their short texts
    /// are the same, or they differ only in what one engine does not report
    /// (a trap's error code on Unicorn, the CPL a transfer arrived at), or
    /// one reports as the trap #DB, #BP or #OF what the other reports as the
    /// software interrupt through vector 1, 3 or 4.
    pub fn agrees(&self, other: &Outcome) -> bool {
        match (self, other) {
            (
                Outcome::Trap {
                    vector: a,
                    error_code: ea,
                    ..
                },
                Outcome::Trap {
                    vector: b,
                    error_code: eb,
                    ..
                },
            ) => a == b && (ea.is_none() || eb.is_none() || ea == eb),
            (
                Outcome::Transfer {
                    kind: a, cpl: ca, ..
                },
                Outcome::Transfer {
                    kind: b, cpl: cb, ..
                },
            ) => a == b && (ca.is_none() || cb.is_none() || ca == cb),
            // A transfer through vector 1, 3 or 4 is reported only for INT1,
            // INT3 or INTO (or INT n of it) as the test; an engine that
            // reports the trap instead (native: the signal, #DB, #BP or #OF)
            // saw the same event.
            (
                Outcome::Trap { vector, .. },
                Outcome::Transfer {
                    kind: TransferKind::Interrupt(v),
                    ..
                },
            )
            | (
                Outcome::Transfer {
                    kind: TransferKind::Interrupt(v),
                    ..
                },
                Outcome::Trap { vector, .. },
            ) => vector == v && matches!(v, 1 | 3 | 4),
            _ => self.short() == other.short(),
        }
    }

    pub fn short(&self) -> String {
        match self {
            Outcome::Completed {
                at_sentinel: true, ..
            } => "completed".into(),
            Outcome::Completed { rip, .. } => format!("completed@{rip:#x}"),
            Outcome::Trap {
                vector, error_code, ..
            } => match error_code {
                Some(ec) => format!("{}({ec:#x})", vector_name(*vector)),
                None => vector_name(*vector),
            },
            Outcome::Transfer { kind, cpl, .. } => {
                let k = match kind {
                    TransferKind::Interrupt(v) => format!("int {v:#x}"),
                    TransferKind::Syscall => "syscall".into(),
                    TransferKind::Sysenter => "sysenter".into(),
                    TransferKind::CallGate => "call-gate".into(),
                };
                match cpl {
                    Some(c) => format!("transfer {k} -> cpl{c}"),
                    None => format!("transfer {k} (not delivered)"),
                }
            }
            Outcome::Shutdown => "shutdown".into(),
            Outcome::Hang => "hang".into(),
            Outcome::EngineError(e) => format!("engine-error: {e}"),
            Outcome::NotSupported(e) => format!("not-supported: {e}"),
        }
    }
}

/// `#GP`, `#UD`, ... for the architectural vectors, `vec 0x41` otherwise.
pub fn vector_name(v: u8) -> String {
    const NAMES: [&str; 22] = [
        "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS",
        "#GP", "#PF", "vec 0xf", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP",
    ];
    NAMES
        .get(v as usize)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("vec {v:#x}"))
}

/// A segment register: selector and, where the engine exposes it, the descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Segment {
    pub selector: u16,
    /// (base, limit, attributes in VMX access-rights layout), if the engine reports it.
    pub cache: Option<(u64, u32, u16)>,
}

/// A descriptor-table register (GDTR, IDTR) or a system segment (LDTR, TR).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableReg {
    pub selector: u16,
    pub base: u64,
    pub limit: u32,
}

/// The R and M part of the state (pg-model section 1): everything a VMM owns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SystemState {
    pub cpl: u8,
    /// CS, SS, DS, ES, FS, GS.
    pub segs: [Segment; 6],
    pub gdtr: TableReg,
    pub idtr: TableReg,
    pub ldtr: TableReg,
    pub tr: TableReg,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// System flags of RFLAGS only: IF, IOPL, VM, AC (other bits masked off).
    pub sys_flags: u64,
    /// (index, value) of the system MSRs the engine reads, sorted by index.
    pub msrs: Vec<(u32, u64)>,
}

/// RFLAGS bits that belong to R.
pub const SYS_FLAGS_MASK: u64 = (1 << 9) | (3 << 12) | (1 << 17) | (1 << 18);
/// RFLAGS bits that are user-visible results (arithmetic flags and DF).
pub const USER_FLAGS_MASK: u64 = 0x8d5 | (1 << 10);

pub const SEG_NAMES: [&str; 6] = ["cs", "ss", "ds", "es", "fs", "gs"];

/// The user-visible part of the state (pg-model section 3): general
/// registers, arithmetic flags, RIP as an offset, the data page and the stack,
/// read at the program's own view so a relocation is already undone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserState {
    /// RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15 (hardware order).
    pub gprs: [u64; 16],
    pub rip: u64,
    /// Arithmetic flags and DF only.
    pub flags: u64,
    pub data: Page,
    pub stack: Page,
}

pub const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// One run: the state it started from and what came of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub outcome: Outcome,
    /// R and M before the instruction.
    pub before: SystemState,
    /// R and M after it, when the run completed or transferred.
    pub after: Option<SystemState>,
    /// User-visible results, when the run completed.
    pub user: Option<UserState>,
}

impl Observation {
    /// An observation for a run that produced only an outcome.
    pub fn outcome_only(outcome: Outcome, before: SystemState) -> Self {
        Observation {
            outcome,
            before,
            after: None,
            user: None,
        }
    }
}

/// A part of R and M (pg-model section 2): what a control-sensitive
/// instruction changes. Serialized by its name, as reports print it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Part {
    #[serde(rename = "privilege level")]
    PrivilegeLevel,
    #[serde(rename = "system flags")]
    SystemFlags,
    #[serde(rename = "descriptor cache")]
    DescriptorCache,
    #[serde(rename = "descriptor-table register")]
    DescriptorTableRegister,
    #[serde(rename = "control register")]
    ControlRegister,
    #[serde(rename = "msr")]
    Msr,
}

impl Part {
    /// Every part, in the order verdicts list them.
    pub const ALL: [Part; 6] = [
        Part::PrivilegeLevel,
        Part::SystemFlags,
        Part::DescriptorCache,
        Part::DescriptorTableRegister,
        Part::ControlRegister,
        Part::Msr,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Part::PrivilegeLevel => "privilege level",
            Part::SystemFlags => "system flags",
            Part::DescriptorCache => "descriptor cache",
            Part::DescriptorTableRegister => "descriptor-table register",
            Part::ControlRegister => "control register",
            Part::Msr => "msr",
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One change of R or M: the part and what changed in it
/// (`descriptor cache: ds 0x0010 -> 0x0023`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub part: Part,
    pub detail: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.part, self.detail)
    }
}

/// The parts of R and M that differ, named the way users filter on them.
pub fn diff_system(a: &SystemState, b: &SystemState) -> Vec<Change> {
    let change = |part, detail| Change { part, detail };
    let mut out = Vec::new();
    if a.cpl != b.cpl {
        out.push(change(
            Part::PrivilegeLevel,
            format!("cpl {} -> {}", a.cpl, b.cpl),
        ));
    }
    if a.sys_flags != b.sys_flags {
        let f = |x: u64| {
            format!(
                "IF={} IOPL={} AC={}",
                (x >> 9) & 1,
                (x >> 12) & 3,
                (x >> 18) & 1
            )
        };
        out.push(change(
            Part::SystemFlags,
            format!("{} -> {}", f(a.sys_flags), f(b.sys_flags)),
        ));
    }
    for (i, name) in SEG_NAMES.iter().enumerate() {
        let (x, y) = (a.segs[i], b.segs[i]);
        if x.selector != y.selector {
            out.push(change(
                Part::DescriptorCache,
                format!("{name} {:#06x} -> {:#06x}", x.selector, y.selector),
            ));
        } else if x.cache.is_some() && y.cache.is_some() && x.cache != y.cache {
            out.push(change(
                Part::DescriptorCache,
                format!("{name} cache {:x?} -> {:x?}", x.cache, y.cache),
            ));
        }
    }
    for (name, x, y) in [("gdtr", a.gdtr, b.gdtr), ("idtr", a.idtr, b.idtr)] {
        if x != y {
            out.push(change(
                Part::DescriptorTableRegister,
                format!(
                    "{name} {:#x}/{:#x} -> {:#x}/{:#x}",
                    x.base, x.limit, y.base, y.limit
                ),
            ));
        }
    }
    for (name, x, y) in [("ldtr", a.ldtr, b.ldtr), ("tr", a.tr, b.tr)] {
        if x != y {
            out.push(change(
                Part::DescriptorTableRegister,
                format!("{name} {:#06x} -> {:#06x}", x.selector, y.selector),
            ));
        }
    }
    for (name, x, y) in [
        ("cr0", a.cr0, b.cr0),
        ("cr3", a.cr3, b.cr3),
        ("cr4", a.cr4, b.cr4),
        ("efer", a.efer, b.efer),
    ] {
        if x != y {
            out.push(change(
                Part::ControlRegister,
                format!("{name} {x:#x} -> {y:#x}"),
            ));
        }
    }
    if a.msrs != b.msrs {
        for (i, v) in &b.msrs {
            let old = a.msrs.iter().find(|(j, _)| j == i).map(|(_, v)| *v);
            if old != Some(*v) {
                let old = old.map_or_else(|| "unset".to_string(), |o| format!("{o:#x}"));
                out.push(change(Part::Msr, format!("{i:#x} {old} -> {v:#x}")));
            }
        }
    }
    out
}

/// The user-visible differences between two results, for evidence.
pub fn diff_user(a: &UserState, b: &UserState) -> Vec<String> {
    let mut out = Vec::new();
    for ((name, x), y) in GPR_NAMES.iter().zip(a.gprs).zip(b.gprs) {
        if x != y {
            out.push(format!("{name} {x:#x} vs {y:#x}"));
        }
    }
    if a.rip != b.rip {
        out.push(format!("rip {:#x} vs {:#x}", a.rip, b.rip));
    }
    if a.flags != b.flags {
        out.push(format!("flags {:#x} vs {:#x}", a.flags, b.flags));
    }
    for (name, x, y) in [("data", &a.data, &b.data), ("stack", &a.stack, &b.stack)] {
        if let Some(first) = x.iter().zip(y.iter()).position(|(p, q)| p != q) {
            let end = (first + 8).min(x.len()).min(y.len());
            out.push(format!(
                "{name}[{first:#x}..] {} vs {}",
                hex(&x[first..end]),
                hex(&y[first..end])
            ));
        } else if x.len() != y.len() {
            out.push(format!("{name} length {} vs {}", x.len(), y.len()));
        }
    }
    out
}

/// The RFLAGS bits of an iced-x86 `RflagsBits` set (OF, SF, ZF, AF, CF,
/// PF, DF; the others iced names are not arithmetic flags of RFLAGS).
pub fn rflags_bits(iced: u32) -> u64 {
    use iced_x86::RflagsBits as F;
    [
        (F::OF, 1 << 11),
        (F::SF, 1 << 7),
        (F::ZF, 1 << 6),
        (F::AF, 1 << 4),
        (F::CF, 1),
        (F::PF, 1 << 2),
        (F::DF, 1 << 10),
    ]
    .iter()
    .filter(|(f, _)| iced & f != 0)
    .map(|(_, b)| b)
    .sum()
}

/// What a run changed in the user-visible state, against its start: each
/// general register that differs from the start (with its new value), RIP
/// and the flags, and the data and stack bytes that changed (offset, new
/// value), in offset order. Computed once per run ([`crate::probe::Run::effects`]) and
/// compared pair by pair ([`diff_effects`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    gprs: [Option<u64>; 16],
    rip: u64,
    flags: u64,
    data: Vec<(usize, u8)>,
    stack: Vec<(usize, u8)>,
}

/// Bytes compared at once before a chunk is looked at byte by byte.
const CHUNK: usize = 64;

/// The bytes of `after` that differ from `start` (offset, new value), with
/// every byte past the end of `start` counted as written. A page the run
/// did not write is usually the start's own buffer, which costs nothing;
/// else equal chunks are skipped with one slice comparison, so an
/// unwritten page costs a memcmp.
fn written(start: &Page, after: &Page) -> Vec<(usize, u8)> {
    if Page::same(start, after) {
        return Vec::new();
    }
    written_bytes(start, after)
}

/// [`written`] of any two byte strings.
fn written_bytes(start: &[u8], after: &[u8]) -> Vec<(usize, u8)> {
    let mut out = Vec::new();
    let common = start.len().min(after.len());
    let (s, a) = (&start[..common], &after[..common]);
    if s != a {
        for (k, (s, a)) in s.chunks(CHUNK).zip(a.chunks(CHUNK)).enumerate() {
            if s != a {
                let base = k * CHUNK;
                out.extend(
                    s.iter()
                        .zip(a)
                        .enumerate()
                        .filter(|(_, (p, q))| p != q)
                        .map(|(i, (_, q))| (base + i, *q)),
                );
            }
        }
    }
    out.extend(
        after[common..]
            .iter()
            .enumerate()
            .map(|(i, b)| (common + i, *b)),
    );
    out
}

impl Effects {
    /// The effects of a run that ended in `after`, having started from `start`.
    pub fn between(start: &UserState, after: &UserState) -> Effects {
        let mut gprs = [None; 16];
        for (i, g) in gprs.iter_mut().enumerate() {
            if start.gprs[i] != after.gprs[i] {
                *g = Some(after.gprs[i]);
            }
        }
        Effects {
            gprs,
            rip: after.rip,
            flags: after.flags,
            data: written(&start.data, &after.data),
            stack: written(&start.stack, &after.stack),
        }
    }
}

/// The user-visible differences between two completed runs, for behavior
/// comparisons: their effects when both are known (what each run changed,
/// and to what; see [`crate::probe::Run::effects`]), else their results as
/// they are. Each run's effects are computed once by the caller, so a run
/// compared with many others is looked at once.
pub fn diff_effects(
    a: &Observation,
    ea: Option<&Effects>,
    b: &Observation,
    eb: Option<&Effects>,
) -> Vec<String> {
    let (Some(ua), Some(ub)) = (&a.user, &b.user) else {
        return Vec::new();
    };
    let (Some(ea), Some(eb)) = (ea, eb) else {
        return diff_user(ua, ub);
    };
    let mut out = Vec::new();
    if ea == eb {
        return out;
    }
    let show = |v: Option<u64>| {
        v.map(|x| format!("{x:#x}"))
            .unwrap_or_else(|| "unchanged".into())
    };
    for (i, name) in GPR_NAMES.iter().enumerate() {
        if ea.gprs[i] != eb.gprs[i] {
            out.push(format!(
                "{name} {} vs {}",
                show(ea.gprs[i]),
                show(eb.gprs[i])
            ));
        }
    }
    if ea.rip != eb.rip {
        out.push(format!("rip {:#x} vs {:#x}", ea.rip, eb.rip));
    }
    if ea.flags != eb.flags {
        out.push(format!("flags {:#x} vs {:#x}", ea.flags, eb.flags));
    }
    for (name, x, y, page_a, page_b) in [
        ("data", &ea.data, &eb.data, &ua.data, &ub.data),
        ("stack", &ea.stack, &eb.stack, &ua.stack, &ub.stack),
    ] {
        if x != y {
            // The first byte where the two runs' writes differ.
            let first = x
                .iter()
                .zip(y.iter())
                .find(|(p, q)| p != q)
                .map(|(p, q)| p.0.min(q.0))
                .or_else(|| x.get(y.len()).or_else(|| y.get(x.len())).map(|p| p.0))
                .unwrap_or(0);
            let end = (first + 8).min(page_a.len()).min(page_b.len());
            out.push(format!(
                "{name}[{first:#x}..] {} vs {} (written by the runs)",
                hex(&page_a[first..end]),
                hex(&page_b[first..end])
            ));
        }
    }
    out
}

/// Lower-case hex without separators.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x90]), "000fa5ff90");
        let all: Vec<u8> = (0..=255).collect();
        let each: String = all.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&all), each);
    }

    #[test]
    fn outcomes_agree_where_they_differ_only_in_what_an_engine_does_not_report() {
        let trap = |vector, error_code| Outcome::Trap {
            vector,
            error_code,
            rip: 0,
            address: None,
        };
        let int = |v, cpl| Outcome::Transfer {
            kind: TransferKind::Interrupt(v),
            rip: 0,
            cpl,
        };
        assert!(trap(13, None).agrees(&trap(13, Some(0))));
        assert!(trap(13, Some(0)).agrees(&trap(13, None)));
        assert!(!trap(13, Some(0)).agrees(&trap(13, Some(0x18))));
        assert!(!trap(13, None).agrees(&trap(6, None)));
        assert!(int(3, None).agrees(&int(3, Some(0))));
        assert!(!int(3, Some(3)).agrees(&int(3, Some(0))));
        // The signal of INT3 / INT1 / INTO is the transfer through its vector.
        assert!(trap(3, None).agrees(&int(3, Some(0))));
        assert!(int(1, Some(0)).agrees(&trap(1, None)));
        assert!(trap(4, None).agrees(&int(4, None)));
        assert!(!trap(13, Some(0x10a)).agrees(&int(0x21, None)));
        assert!(!trap(3, None).agrees(&int(4, None)));
        let done = Outcome::Completed {
            rip: 1,
            at_sentinel: true,
        };
        assert!(done.agrees(&done.clone()));
        assert!(!done.agrees(&trap(13, None)));
    }

    #[test]
    fn diffs_name_the_part_that_changed() {
        let a = SystemState {
            cpl: 0,
            sys_flags: 1 << 9,
            ..Default::default()
        };
        let mut b = a.clone();
        b.sys_flags = 0;
        b.segs[2].selector = 0x2b;
        let d = diff_system(&a, &b);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].part, Part::SystemFlags);
        assert_eq!(d[1].part, Part::DescriptorCache);
        assert_eq!(d[1].to_string(), "descriptor cache: ds 0x0000 -> 0x002b");
        assert!(diff_system(&a, &a).is_empty());
    }

    #[test]
    fn user_diff_reports_registers_and_memory() {
        let a = UserState {
            data: vec![0; 16].into(),
            stack: vec![1; 16].into(),
            ..Default::default()
        };
        let mut b = a.clone();
        b.gprs[0] = 0x1b;
        b.data[4] = 9;
        let d = diff_user(&a, &b);
        assert_eq!(
            d,
            vec![
                "rax 0x0 vs 0x1b".to_string(),
                "data[0x4..] 0000000000000000 vs 0900000000000000".to_string()
            ]
        );
    }

    #[test]
    fn written_bytes_are_those_a_byte_by_byte_walk_finds() {
        // The old way: every byte of `after`, kept where the start differs.
        let naive = |s: &[u8], a: &[u8]| -> Vec<(usize, u8)> {
            a.iter()
                .enumerate()
                .filter(|(i, b)| s.get(*i) != Some(b))
                .map(|(i, b)| (i, *b))
                .collect()
        };
        let start: Vec<u8> = (0..4096).map(|i| (i * 7 + 3) as u8).collect();
        for writes in [
            vec![],
            vec![0],
            vec![63, 64],
            vec![5, 200, 4095],
            (1000..1300).collect::<Vec<_>>(),
        ] {
            let mut after = start.clone();
            for &w in &writes {
                after[w] ^= 0x5a;
            }
            assert_eq!(
                written_bytes(&start, &after),
                naive(&start, &after),
                "{writes:?}"
            );
            let (s, a) = (Page::from(start.clone()), Page::from(after.clone()));
            assert_eq!(written(&s, &a), naive(&start, &after), "{writes:?}");
            // Pages of other lengths: bytes past the start count as written.
            assert_eq!(
                written_bytes(&start[..100], &after),
                naive(&start[..100], &after)
            );
            assert_eq!(
                written_bytes(&start, &after[..70]),
                naive(&start, &after[..70])
            );
        }
        // A page shared with the start was not written.
        let s = Page::from(start.clone());
        assert_eq!(written(&s, &s.clone()), vec![]);
    }

    #[test]
    fn outcome_text() {
        let t = Outcome::Trap {
            vector: 13,
            error_code: Some(0),
            rip: 0,
            address: None,
        };
        assert_eq!(t.short(), "#GP(0x0)");
        assert_eq!(t.long(), "#GP(0x0)");
        let pf = Outcome::Trap {
            vector: 14,
            error_code: Some(6),
            rip: 0,
            address: Some(0x8000),
        };
        assert!(pf.is_memory_trap());
        assert_eq!(
            pf.short(),
            "#PF(0x6)",
            "the address is not part of the report text"
        );
        assert_eq!(pf.long(), "#PF(0x6) at 0x8000");
        assert!(!t.is_memory_trap());
    }
}
