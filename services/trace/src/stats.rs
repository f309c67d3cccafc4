//! The statistics the trace service keeps: per VM (by the kernel's trace id), per basic exit
//! reason, a count and two [`Histogram`]s, of the exit-to-entry time ([`Record::total`]) and
//! of the handler's share ([`Record::handler`]).
//!
//! Every allocation is fallible (`try_reserve`): a service out of heap answers
//! [`TraceError::OutOfMemory`] to `start` and counts the records it could not keep
//! ([`TraceStats::missed`]) instead of dying.
//!
//! A VM the table does not know when its records arrive was traced before this instance of
//! the service started (it restarted): it gets an entry named `vm<id>` with `lost` set, since
//! the exits before the restart are gone.
#![forbid(unsafe_code)]

use alloc::vec::Vec as AllocVec;
use core::fmt::Write;

use abi::trace::Record;
use heapless::{String, Vec};
use userlib::proto::trace::{
    Bucket, Row, Share, Totals, TraceError, BUCKETS_MAX, NAME_MAX, ROWS_MAX,
};

use crate::histogram::Histogram;

/// VMs in the table at once.
pub const MAX_VMS: usize = 16;

/// One basic exit reason of one VM.
#[derive(Clone, Debug)]
pub struct ReasonStats {
    /// Exits, including those no entry followed (not in `full`).
    pub count: u64,
    /// Exit-to-entry times.
    pub full: Histogram,
    /// Handler shares (exits a handler answered).
    pub handler: Histogram,
}

impl ReasonStats {
    fn try_new() -> Result<ReasonStats, TraceError> {
        Ok(ReasonStats {
            count: 0,
            full: Histogram::try_new().ok_or(TraceError::OutOfMemory)?,
            handler: Histogram::try_new().ok_or(TraceError::OutOfMemory)?,
        })
    }

    fn histogram(&self, share: Share) -> &Histogram {
        match share {
            Share::Full => &self.full,
            Share::Handler => &self.handler,
        }
    }

    fn row(&self, reason: u16) -> Row {
        Row {
            reason,
            count: self.count,
            min: self.full.min(),
            p50: self.full.value_at_quantile(500),
            p90: self.full.value_at_quantile(900),
            p99: self.full.value_at_quantile(990),
            max: self.full.max(),
            total: self.full.total(),
            handler_p50: self.handler.value_at_quantile(500),
            handler_total: self.handler.total(),
        }
    }
}

/// One VM's entry.
#[derive(Debug)]
struct VmStats {
    id: u32,
    name: String<NAME_MAX>,
    /// Exits before this instance's first record of it are lost (see the module doc).
    lost: bool,
    /// The service traces it (`start` and not yet `stop`, or known from the ring).
    tracing: bool,
    /// By basic reason, ascending.
    reasons: AllocVec<(u16, ReasonStats)>,
}

impl VmStats {
    fn totals(&self) -> Totals {
        let mut exits: u64 = 0;
        let mut time: u64 = 0;
        for (_, stats) in &self.reasons {
            exits = exits.saturating_add(stats.count);
            time = time.saturating_add(stats.full.total());
        }
        Totals {
            name: self.name.clone(),
            exits,
            time,
            dropped: 0,
            lost: self.lost,
        }
    }

    /// The stats of `reason`, created if new.
    fn reason_mut(&mut self, reason: u16) -> Result<&mut ReasonStats, TraceError> {
        let at = match self.reasons.binary_search_by_key(&reason, |(r, _)| *r) {
            Ok(at) => at,
            Err(at) => {
                let stats = ReasonStats::try_new()?;
                self.reasons
                    .try_reserve(1)
                    .map_err(|_| TraceError::OutOfMemory)?;
                self.reasons.insert(at, (reason, stats));
                at
            }
        };
        Ok(&mut self.reasons[at].1)
    }
}

/// The whole table.
#[derive(Debug, Default)]
pub struct TraceStats {
    vms: AllocVec<VmStats>,
    records: u64,
    missed: u64,
}

impl TraceStats {
    /// An empty table (allocates nothing yet).
    pub const fn new() -> TraceStats {
        TraceStats {
            vms: AllocVec::new(),
            records: 0,
            missed: 0,
        }
    }

    /// VMs in the table.
    pub fn vm_count(&self) -> usize {
        self.vms.len()
    }

    /// Records ingested.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Records ingested but not counted: of a VM the table had no room for, or when the heap
    /// was exhausted.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The trace ids in the table, in the order they entered it.
    pub fn vm_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.vms.iter().map(|vm| vm.id)
    }

    fn find(&self, vm_id: u32) -> Result<&VmStats, TraceError> {
        self.vms
            .iter()
            .find(|vm| vm.id == vm_id)
            .ok_or(TraceError::UnknownVm)
    }

    fn find_mut(&mut self, vm_id: u32) -> Result<&mut VmStats, TraceError> {
        self.vms
            .iter_mut()
            .find(|vm| vm.id == vm_id)
            .ok_or(TraceError::UnknownVm)
    }

    /// Makes room for one more VM: when the table is full, the oldest VM no longer traced
    /// leaves it. [`TraceError::TooManyVms`] when all [`MAX_VMS`] are traced.
    fn make_room(&mut self) -> Result<(), TraceError> {
        if self.vms.len() >= MAX_VMS {
            let idle = self
                .vms
                .iter()
                .position(|vm| !vm.tracing)
                .ok_or(TraceError::TooManyVms)?;
            self.vms.remove(idle);
        }
        self.vms.try_reserve(1).map_err(|_| TraceError::OutOfMemory)
    }

    /// Traces VM `vm_id` under `name`. A VM already in the table keeps its statistics and
    /// takes the new name (a restarted service learns the name of a `vm<id>` entry this way).
    pub fn start(&mut self, vm_id: u32, name: &str) -> Result<(), TraceError> {
        let mut new_name = String::new();
        // Longer names are cut at a character boundary (the protocol's names fit).
        for c in name.chars() {
            if new_name.push(c).is_err() {
                break;
            }
        }
        if let Ok(vm) = self.find_mut(vm_id) {
            vm.name = new_name;
            vm.tracing = true;
            return Ok(());
        }
        self.make_room()?;
        self.vms.push(VmStats {
            id: vm_id,
            name: new_name,
            lost: false,
            tracing: true,
            reasons: AllocVec::new(),
        });
        Ok(())
    }

    /// Stops tracing VM `vm_id`; its statistics stay readable until its slot is needed.
    pub fn stop(&mut self, vm_id: u32) -> Result<(), TraceError> {
        self.find_mut(vm_id)?.tracing = false;
        Ok(())
    }

    /// Forgets VM `vm_id`'s statistics (and that any were lost): counting starts afresh.
    pub fn reset(&mut self, vm_id: u32) -> Result<(), TraceError> {
        let vm = self.find_mut(vm_id)?;
        vm.reasons = AllocVec::new();
        vm.lost = false;
        Ok(())
    }

    /// Counts one exit record.
    pub fn ingest(&mut self, record: &Record) {
        self.records += 1;
        if self.try_ingest(record).is_err() {
            self.missed += 1;
        }
    }

    fn try_ingest(&mut self, record: &Record) -> Result<(), TraceError> {
        if self.find(record.vm).is_err() {
            self.make_room()?;
            let mut name = String::new();
            // "vm" and at most 10 digits fit NAME_MAX.
            let _ = write!(name, "vm{}", record.vm);
            self.vms.push(VmStats {
                id: record.vm,
                name,
                lost: true,
                tracing: true,
                reasons: AllocVec::new(),
            });
        }
        let stats = self
            .find_mut(record.vm)?
            .reason_mut(record.basic_reason())?;
        stats.count += 1;
        if let Some(total) = record.total() {
            stats.full.record(total);
        }
        if let Some(handler) = record.handler() {
            stats.handler.record(handler);
        }
        Ok(())
    }

    /// VM `vm_id`'s totals (`dropped` is 0: the caller knows the ring's count) and its rows
    /// from reason `from_reason` on, ascending, at most [`ROWS_MAX`]; the last item is the
    /// reason the next page starts at, `None` after the last row.
    pub fn rows(
        &self,
        vm_id: u32,
        from_reason: u16,
    ) -> Result<(Totals, Vec<Row, ROWS_MAX>, Option<u16>), TraceError> {
        let vm = self.find(vm_id)?;
        let mut rest = vm
            .reasons
            .iter()
            .filter(|(reason, _)| *reason >= from_reason);
        let mut rows = Vec::new();
        for (reason, stats) in rest.by_ref().take(ROWS_MAX) {
            // `take(ROWS_MAX)` keeps within the capacity.
            let _ = rows.push(stats.row(*reason));
        }
        let next = rest.next().map(|(reason, _)| *reason);
        Ok((vm.totals(), rows, next))
    }

    /// The nonzero buckets of (`vm_id`, `reason`, `share`) from the `from`-th on, ascending,
    /// at most [`BUCKETS_MAX`]; the last item is the `from` of the next page, `None` after
    /// the last bucket. A reason the VM has not exited with has no buckets.
    pub fn buckets(
        &self,
        vm_id: u32,
        reason: u16,
        share: Share,
        from: u16,
    ) -> Result<(Vec<Bucket, BUCKETS_MAX>, Option<u16>), TraceError> {
        let vm = self.find(vm_id)?;
        let mut buckets = Vec::new();
        let Some((_, stats)) = vm.reasons.iter().find(|(r, _)| *r == reason) else {
            return Ok((buckets, None));
        };
        let mut rest = stats.histogram(share).buckets().skip(usize::from(from));
        for (lo, hi, count) in rest.by_ref().take(BUCKETS_MAX) {
            // `take(BUCKETS_MAX)` keeps within the capacity.
            let _ = buckets.push(Bucket { lo, hi, count });
        }
        // There are fewer than 2^16 buckets, so the next index fits a u16.
        let next = rest
            .next()
            .map(|_| from.saturating_add(buckets.len() as u16));
        Ok((buckets, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::trace::flags;
    use alloc::vec;
    use proptest::prelude::*;

    /// An exit of `vm` with `reason` that took `full` cycles, `handler` of them in a handler.
    fn exit(vm: u32, reason: u32, full: u64, handler: Option<u64>) -> Record {
        let t_exit = 1000;
        let (t_recv, t_reply, flags) = match handler {
            Some(h) => (t_exit + 1, t_exit + 1 + h, 0),
            None => (0, 0, flags::KERNEL),
        };
        Record {
            vm,
            vcpu: 0,
            reason,
            flags,
            qualification: 0,
            t_exit,
            t_recv,
            t_reply,
            t_entry: t_exit + full,
        }
    }

    fn stopped(vm: u32, reason: u32) -> Record {
        Record {
            t_entry: 0,
            flags: flags::STOPPED,
            ..exit(vm, reason, 0, Some(5))
        }
    }

    #[test]
    fn rows_count_exits_per_reason() {
        let mut stats = TraceStats::new();
        stats.start(7, "linux").unwrap();
        for full in [100, 200, 300] {
            stats.ingest(&exit(7, 30, full, Some(full / 2)));
        }
        stats.ingest(&exit(7, 10, 40, None));
        // Bit 31 (entry failure) and the other high bits are not part of the basic reason.
        stats.ingest(&exit(7, 0x8000_0000 | 10, 8, None));
        stats.ingest(&stopped(7, 30));
        let (totals, rows, next) = stats.rows(7, 0).unwrap();
        assert_eq!(totals.name.as_str(), "linux");
        assert_eq!((totals.exits, totals.time, totals.lost), (6, 648, false));
        assert_eq!(next, None);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            Row {
                reason: 10,
                count: 2,
                min: 8,
                p50: 8,
                p90: 40,
                p99: 40,
                max: 40,
                total: 48,
                handler_p50: 0,
                handler_total: 0,
            }
        );
        let r30 = rows[1];
        assert_eq!((r30.reason, r30.count, r30.min, r30.max), (30, 4, 100, 300));
        assert_eq!(r30.total, 600);
        // 200 is in bucket 192..=207; p90 and p99 rank 3 = 300.
        assert_eq!((r30.p50, r30.p90, r30.p99), (207, 300, 300));
        // Handler shares 50, 100, 150 and the stopped exit's 5: sorted 5 50 100 150, p50 = 50
        // (bucket 48..=51, upper bound 51).
        assert_eq!((r30.handler_p50, r30.handler_total), (51, 305));
        assert_eq!(stats.records(), 6);
    }

    #[test]
    fn rows_page_by_reason() {
        let mut stats = TraceStats::new();
        stats.start(1, "a").unwrap();
        let reasons = [48u32, 1, 30, 10, 12, 28, 2, 0, 54, 31];
        for r in reasons {
            stats.ingest(&exit(1, r, 100 + u64::from(r), None));
        }
        let mut seen = vec![];
        let mut from = 0;
        let mut pages = 0;
        loop {
            let (totals, rows, next) = stats.rows(1, from).unwrap();
            assert_eq!(totals.exits, 10);
            assert!(rows.len() <= ROWS_MAX);
            pages += 1;
            seen.extend(rows.iter().map(|row| row.reason));
            match next {
                Some(n) => {
                    assert!(n > *seen.last().unwrap());
                    from = n;
                }
                None => break,
            }
        }
        let mut sorted: vec::Vec<u16> = reasons.iter().map(|&r| r as u16).collect();
        sorted.sort_unstable();
        assert_eq!(seen, sorted);
        assert_eq!(pages, reasons.len().div_ceil(ROWS_MAX));
        // A page from a reason between two codes starts at the next code.
        let (_, rows, _) = stats.rows(1, 11).unwrap();
        assert_eq!(rows[0].reason, 12);
        let (_, rows, next) = stats.rows(1, 55).unwrap();
        assert!(rows.is_empty());
        assert_eq!(next, None);
    }

    #[test]
    fn unknown_vms_are_errors_and_change_nothing() {
        let mut stats = TraceStats::new();
        assert_eq!(stats.rows(3, 0).err(), Some(TraceError::UnknownVm));
        assert_eq!(
            stats.buckets(3, 0, Share::Full, 0).err(),
            Some(TraceError::UnknownVm)
        );
        assert_eq!(stats.stop(3), Err(TraceError::UnknownVm));
        assert_eq!(stats.reset(3), Err(TraceError::UnknownVm));
        assert_eq!(stats.vm_count(), 0);
    }

    #[test]
    fn records_of_an_unknown_vm_are_kept_as_lost() {
        let mut stats = TraceStats::new();
        stats.ingest(&exit(4_000_000_000, 30, 100, None));
        let (totals, rows, _) = stats.rows(4_000_000_000, 0).unwrap();
        assert_eq!(totals.name.as_str(), "vm4000000000");
        assert!(totals.lost);
        assert_eq!(rows[0].count, 1);
        // A later start names it and keeps what was counted (and that some was lost).
        stats.start(4_000_000_000, "linux").unwrap();
        let (totals, _, _) = stats.rows(4_000_000_000, 0).unwrap();
        assert_eq!(
            (totals.name.as_str(), totals.exits, totals.lost),
            ("linux", 1, true)
        );
        // A reset starts afresh: nothing is missing from the new count.
        stats.reset(4_000_000_000).unwrap();
        let (totals, rows, _) = stats.rows(4_000_000_000, 0).unwrap();
        assert_eq!((totals.exits, totals.lost, rows.len()), (0, false, 0));
        // Tracing goes on after a reset.
        stats.ingest(&exit(4_000_000_000, 1, 5, None));
        assert_eq!(stats.rows(4_000_000_000, 0).unwrap().0.exits, 1);
    }

    #[test]
    fn a_full_table_evicts_only_stopped_vms() {
        let mut stats = TraceStats::new();
        for id in 0..MAX_VMS as u32 {
            stats.start(id, "v").unwrap();
        }
        assert_eq!(stats.start(100, "w"), Err(TraceError::TooManyVms));
        // A record of an unknown VM has no room either: counted as missed.
        stats.ingest(&exit(101, 1, 1, None));
        assert_eq!((stats.records(), stats.missed()), (1, 1));
        assert_eq!(stats.vm_count(), MAX_VMS);
        // Restarting a VM already in the table needs no room.
        stats.start(3, "again").unwrap();
        stats.stop(5).unwrap();
        stats.stop(2).unwrap();
        // A stopped VM's statistics stay readable ...
        assert!(stats.rows(5, 0).is_ok());
        // ... until a new VM needs the slot: the oldest stopped one (2) leaves.
        stats.start(100, "w").unwrap();
        assert_eq!(stats.rows(2, 0).err(), Some(TraceError::UnknownVm));
        assert!(stats.rows(5, 0).is_ok());
        assert_eq!(stats.vm_ids().last(), Some(100));
        assert_eq!(stats.vm_count(), MAX_VMS);
    }

    #[test]
    fn long_names_are_cut() {
        let mut stats = TraceStats::new();
        stats.start(1, "abcdefghijklmnopqrstuvwxyz").unwrap();
        stats.start(2, "ééééééééé").unwrap(); // 18 bytes: 8 characters fit
        assert_eq!(
            stats.rows(1, 0).unwrap().0.name.as_str(),
            "abcdefghijklmnop"
        );
        assert_eq!(stats.rows(2, 0).unwrap().0.name.as_str(), "éééééééé");
    }

    #[test]
    fn buckets_page_through_a_histogram() {
        let mut stats = TraceStats::new();
        stats.start(1, "a").unwrap();
        // 40 powers of two: 40 nonzero full buckets; handler shares all 3.
        for v in 0..40 {
            stats.ingest(&exit(1, 48, 1 << v, Some(3)));
        }
        let mut all = vec![];
        let mut from = 0;
        loop {
            let (buckets, next) = stats.buckets(1, 48, Share::Full, from).unwrap();
            assert!(buckets.len() <= BUCKETS_MAX);
            all.extend(buckets.iter().copied());
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(all.len(), 40);
        assert_eq!(all.iter().map(|b| b.count).sum::<u64>(), 40);
        assert_eq!((all[0].lo, all[0].hi), (1, 1));
        assert_eq!(all[39].lo, 1 << 39);
        for pair in all.windows(2) {
            assert!(pair[0].hi < pair[1].lo);
        }
        let (handler, next) = stats.buckets(1, 48, Share::Handler, 0).unwrap();
        assert_eq!(
            handler.as_slice(),
            [Bucket {
                lo: 3,
                hi: 3,
                count: 40
            }]
        );
        assert_eq!(next, None);
        // Past the end, and a reason never seen: empty.
        assert_eq!(
            stats.buckets(1, 48, Share::Full, 40).unwrap(),
            (Vec::new(), None)
        );
        assert_eq!(
            stats.buckets(1, 49, Share::Full, 0).unwrap(),
            (Vec::new(), None)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any mix of records over a few VMs and reasons: per VM the rows' counts add up to
        /// the VM's records, their totals to the sum of its full times, and each row's min,
        /// max and count are exact.
        #[test]
        fn rows_agree_with_the_records(
            records in proptest::collection::vec(
                (0u32..4, 0u32..70, 0u64..1_000_000, proptest::option::of(0u64..1_000), any::<bool>()),
                0..300,
            )
        ) {
            let mut stats = TraceStats::new();
            let records: vec::Vec<Record> = records
                .into_iter()
                .map(|(vm, reason, full, handler, stop)| {
                    if stop { stopped(vm, reason) } else { exit(vm, reason, full, handler) }
                })
                .collect();
            for r in &records {
                stats.ingest(r);
            }
            prop_assert_eq!(stats.records(), records.len() as u64);
            prop_assert_eq!(stats.missed(), 0);
            for vm in 0..4u32 {
                let mine: vec::Vec<&Record> = records.iter().filter(|r| r.vm == vm).collect();
                let Ok((totals, _, _)) = stats.rows(vm, 0) else {
                    prop_assert!(mine.is_empty());
                    continue;
                };
                prop_assert_eq!(totals.exits, mine.len() as u64);
                prop_assert_eq!(totals.time, mine.iter().filter_map(|r| r.total()).sum::<u64>());
                let mut from = 0;
                let mut rows = vec![];
                loop {
                    let (_, page, next) = stats.rows(vm, from).unwrap();
                    rows.extend(page);
                    match next { Some(n) => from = n, None => break }
                }
                for row in rows {
                    let of_reason: vec::Vec<&&Record> =
                        mine.iter().filter(|r| r.basic_reason() == row.reason).collect();
                    let fulls: vec::Vec<u64> = of_reason.iter().filter_map(|r| r.total()).collect();
                    prop_assert_eq!(row.count, of_reason.len() as u64);
                    prop_assert_eq!(row.min, fulls.iter().copied().min().unwrap_or(0));
                    prop_assert_eq!(row.max, fulls.iter().copied().max().unwrap_or(0));
                    prop_assert!(row.min <= row.p50 && row.p50 <= row.p90);
                    prop_assert!(row.p90 <= row.p99 && row.p99 <= row.max);
                    prop_assert_eq!(
                        row.handler_total,
                        of_reason.iter().filter_map(|r| r.handler()).sum::<u64>()
                    );
                }
            }
        }
    }
}
