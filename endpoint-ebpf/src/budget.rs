//! Budgets: what each CPU may still send of its own this second — RSTs for cut
//! connections, ICMP messages — so that no flood of packets the node answers becomes a
//! flood of answers.

use endpoint_common::maps::Budget;

use crate::{classify, conntrack::now_s, maps::BUDGETS};

/// Takes one RST from this CPU's budget for this second, if any is left.
#[inline(always)]
pub fn reset() -> bool {
    let per_second = classify::settings().map_or(0, |s| s.resets_per_second);
    spend(per_second, |budget| &mut budget.resets)
}

/// Takes one ICMP message from this CPU's budget for this second, if any is left.
#[inline(always)]
pub fn icmp() -> bool {
    let per_second = classify::settings().map_or(0, |s| s.icmp_per_second);
    spend(per_second, |budget| &mut budget.icmp)
}

#[inline(always)]
fn spend(per_second: u32, spent: impl FnOnce(&mut Budget) -> &mut u32) -> bool {
    let Some(budget) = BUDGETS.get_ptr_mut(0) else {
        return false;
    };
    let now = now_s() as u32;
    // SAFETY: a per-CPU slot; nothing else on this CPU runs while the program does.
    let budget = unsafe { &mut *budget };
    if budget.second != now {
        budget.second = now;
        budget.resets = 0;
        budget.icmp = 0;
    }
    let spent = spent(budget);
    if *spent >= per_second {
        return false;
    }
    *spent += 1;
    true
}
