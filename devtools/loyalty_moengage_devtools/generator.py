"""Deterministic synthetic loyalty program: members, transactions, a points ledger with lots,
redemptions (and reversals), expiries, tier/status changes and segment memberships.

``generate(dsn, ...)`` writes one program into the reference schema (include/sql/schema) with
COPY. Same seed + same arguments + same ``end_date`` => identical rows (in a database that holds
no other program; ids continue after other programs' ids otherwise).

Nights covered: the local dates ``end_date - days`` .. ``end_date - 1`` in the program's time
zone; night D's window is [D 00:00 local, D+1 00:00 local) and rows belong to the night whose
window holds their ``recorded_at``. Nothing is recorded at or after ``end_date`` 00:00.

Ledger invariants (the sync's SQL relies on them):
* earn and reversal points are positive, redeem and expire negative;
* every earn is a lot (expires_on = local occurred date + points_validity_days, lot_entry_id
  NULL); accruals carry a transaction and points = floor(amount * earn_rate);
* a redemption writes one negative redeem entry per lot consumed, FIFO by expires_on, each with
  redemption_id and lot_entry_id; a reversal writes one positive entry per consumed lot;
* on a lot's expires_on (00:00-00:30 local) its remaining points expire in one entry, unless 0;
* every lot's remaining points, and so every member's balance, stay >= 0 at every recorded_at;
* a few rows each night are late: occurred 23:50-23:59 local, recorded 00:01-00:20 next day.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import numpy as np

from loyalty_moengage.progress import Progress

log = logging.getLogger(__name__)

US = 1_000_000  # microseconds per second
HOUR = 3600 * US
DAY_US = 24 * HOUR
EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()

STATUSES = ("active", "inactive", "suspended", "blocked", "cancelled")
ACTIVE, INACTIVE, SUSPENDED, BLOCKED, CANCELLED = range(5)
TIERS = ("Silver", "Gold", "Platinum")  # rank = index + 1
EARNING_TYPES = ("accrual", "campaign_bonus", "manual_bonus", "tier_bonus")
ACCRUAL, CAMPAIGN, MANUAL, TIER_BONUS = range(4)
ENTRY_TYPES = ("earn", "redeem", "reversal", "expire")
EARN, REDEEM, REVERSAL, EXPIRE = range(4)
CHANNELS = ("store", "website", "app", "call_centre")
CHANNEL_P = (0.62, 0.13, 0.20, 0.05)

SEGMENTS = (
    ("high_value", "High value", 0.08),
    ("lapsing", "Lapsing", 0.12),
    ("new_joiners", "New joiners", 0.05),
    ("weekend_shoppers", "Weekend shoppers", 0.15),
    ("app_users", "App users", 0.20),
    ("birthday_month", "Birthday month", 0.08),
)
STORE_CITIES = (
    "Mumbai Central", "Bandra", "Andheri", "Pune Camp", "Koregaon Park", "Bengaluru MG Road",
    "Indiranagar", "Whitefield", "Chennai T Nagar", "Hyderabad Banjara Hills", "Gachibowli",
    "Delhi Connaught Place", "Saket", "Gurugram Cyber Hub", "Noida Sector 18", "Kolkata Park Street",
    "Ahmedabad SG Highway", "Jaipur MI Road", "Kochi Marine Drive",
)
CATALOGUE = (  # sku, name, points
    ("MKT-COF-050", "Coffee voucher", 50),
    ("MKT-MOV-150", "Movie ticket", 150),
    ("MKT-GRO-200", "Grocery voucher INR 200", 200),
    ("MKT-FUL-250", "Fuel voucher INR 250", 250),
    ("MKT-DIN-400", "Dining voucher", 400),
    ("MKT-HPH-600", "Wireless earphones", 600),
    ("MKT-AMZ-800", "Shopping gift card INR 800", 800),
    ("MKT-SPA-1200", "Spa session", 1200),
    ("MKT-WAT-2000", "Smart watch", 2000),
    ("MKT-STY-3500", "Weekend staycation", 3500),
)
FIRST_NAMES = (
    "Aarav", "Vivaan", "Aditya", "Vihaan", "Arjun", "Sai", "Reyansh", "Ayaan", "Krishna", "Ishaan",
    "Rohan", "Kabir", "Rahul", "Amit", "Vikram", "Ananya", "Diya", "Aadhya", "Saanvi", "Pari",
    "Anika", "Navya", "Myra", "Sara", "Priya", "Neha", "Pooja", "Kavya", "Meera", "Isha",
)
LAST_NAMES = (
    "Sharma", "Verma", "Gupta", "Iyer", "Nair", "Reddy", "Patel", "Shah", "Mehta", "Kapoor",
    "Singh", "Khan", "Das", "Banerjee", "Chatterjee", "Menon", "Pillai", "Joshi", "Kulkarni", "Rao",
)


@dataclass
class GenerationSummary:
    program_id: str
    members: int
    days: int
    seed: int
    time_zone: str
    end_date: str
    first_night: str
    last_night: str
    nights: list[str]
    tables: dict[str, int] = field(default_factory=dict)
    ledger_entry_types: dict[str, int] = field(default_factory=dict)
    earning_types: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    seconds_build: float = 0.0
    seconds_load: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# helpers


class _Acc:
    """Accumulates columns (lists of numpy arrays) and concatenates them once."""

    def __init__(self, *names: str):
        self.names = names
        self.parts: dict[str, list[np.ndarray]] = {n: [] for n in names}

    def add(self, **cols) -> None:
        n = None
        for name in self.names:
            a = np.asarray(cols[name])
            if a.ndim == 0:
                a = np.full(n if n is not None else 1, a)
            n = len(a) if n is None else n
            self.parts[name].append(a.astype(np.int64, copy=False))

    def build(self) -> dict[str, np.ndarray]:
        return {n: (np.concatenate(p) if p else np.zeros(0, np.int64)) for n, p in self.parts.items()}


def _pick(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    n = int(min(max(n, 0), len(pool)))
    if n == 0:
        return np.zeros(0, np.int64)
    return np.asarray(rng.choice(pool, n, replace=False), dtype=np.int64)


def _daytime(rng: np.random.Generator, n: int) -> np.ndarray:
    """Microseconds after local midnight, 00:36-23:42, peaking in the afternoon."""
    h = np.where(rng.random(n) < 0.85, rng.normal(14.0, 3.5, n), rng.uniform(0.6, 23.7, n))
    return (np.clip(h, 0.6, 23.7) * HOUR).astype(np.int64)


def _lag(rng: np.random.Generator, n: int, lo: float = 0.5, hi: float = 180.0) -> np.ndarray:
    return (rng.uniform(lo, hi, n) * US).astype(np.int64)


class _Clock:
    """Local day index (0 = first night) -> UTC microseconds of its local midnight."""

    def __init__(self, first: dt.date, days: int, tz: ZoneInfo):
        self.dmin = -1200
        self.dmax = days + 3
        mids = []
        for d in range(self.dmin, self.dmax + 1):
            local = dt.datetime.combine(first + dt.timedelta(days=d), dt.time(0), tzinfo=tz)
            mids.append(int(local.timestamp()) * US)
        self.mid = np.array(mids, dtype=np.int64)
        self.first_ordinal = first.toordinal()

    def midnight(self, day) -> np.ndarray:
        return self.mid[np.asarray(day) - self.dmin]

    def at(self, day, us) -> np.ndarray:
        """UTC time of `us` microseconds after local midnight of `day` (clipped to that day)."""
        idx = np.asarray(day) - self.dmin
        start = self.mid[idx]
        return start + np.minimum(us, self.mid[idx + 1] - start - 1)

    def late(self, rng: np.random.Generator, day) -> tuple[np.ndarray, np.ndarray]:
        """Occurred 23:50-23:59:50 local on `day`, recorded 00:01-00:20 local the next day."""
        day = np.asarray(day)
        nxt = self.midnight(day + 1)
        occ = nxt - (rng.uniform(10, 600, len(day)) * US).astype(np.int64)
        rec = nxt + (rng.uniform(60, 1190, len(day)) * US).astype(np.int64)
        return occ, rec


def _late_count(n: int, frac: float, minimum: int, allowed: bool) -> int:
    """How many of n same-type events of a night are late; always leaves one on time."""
    if not allowed or n < 2:
        return 0
    return int(min(max(minimum, round(frac * n)), n - 1))


# --------------------------------------------------------------------------------------------
# simulation (pure: numpy arrays in, numpy arrays out)


@dataclass
class _Params:
    program_id: str
    members: int
    days: int
    seed: int
    first: dt.date
    tz: ZoneInfo
    earn_rate_e4: int = 1000  # earn_rate 0.1 in ten-thousandths (numeric(12,4))
    validity: int = 365
    last_night_activity: float = 1.0  # accrual-rate multiplier on the last night (benchmarks)


@dataclass
class _Members:
    """Per-member arrays, indexed by member position (member_id order = enrolment order)."""

    pre: np.ndarray          # enrolled before night 0
    enroll_day: np.ndarray
    enroll_t: np.ndarray
    enroll_rec: np.ndarray
    is_host: np.ndarray      # hosts carry the forced lots and never redeem or change status
    gender: np.ndarray
    first_idx: np.ndarray
    last_idx: np.ndarray
    null_profile: np.ndarray
    null_phone: np.ndarray
    weight: np.ndarray       # relative earning rate, mean 1
    status: np.ndarray
    tier: np.ndarray

    @property
    def hosts(self) -> np.ndarray:
        return np.flatnonzero(self.is_host)

    @property
    def not_host(self) -> np.ndarray:
        return ~self.is_host


@dataclass
class _Sim:
    """What the simulation steps share: one RNG stream (so the order of steps is the output), the
    clock, the members and the collectors of earns, transactions and changes."""

    p: _Params
    rng: np.random.Generator
    clock: _Clock
    m: _Members
    store_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    earns: _Acc = field(default_factory=lambda: _Acc("member", "etype", "points", "day", "occ", "rec", "txn"))
    txns: _Acc = field(default_factory=lambda: _Acc("member", "amount", "store", "channel", "occ", "rec"))
    tier_ch: _Acc = field(default_factory=lambda: _Acc("member", "from_", "to", "occ", "rec"))
    status_ch: _Acc = field(default_factory=lambda: _Acc("member", "from_", "to", "occ", "rec"))
    n_txn: int = 0

    def add_accruals(self, member, day, occ, rec, amount=None) -> None:
        """Purchases and the earn lot each one makes."""
        rng, n = self.rng, len(member)
        if amount is None:
            amount = np.maximum((rng.lognormal(np.log(1200.0), 0.9, n) * 100).astype(np.int64), 1000)
        channel = rng.choice(4, n, p=CHANNEL_P)
        store = np.where(channel == 0, rng.choice(len(self.store_w), n, p=self.store_w), -1)
        self.txns.add(member=member, amount=amount, store=store, channel=channel, occ=occ, rec=rec)
        points = amount * self.p.earn_rate_e4 // 1_000_000
        self.earns.add(member=member, etype=ACCRUAL, points=points, day=day, occ=occ,
                       rec=rec + _lag(rng, n, 0.01, 2.0), txn=np.arange(self.n_txn, self.n_txn + n))
        self.n_txn += n

    def add_bonus(self, member, etype, points, day, occ, rec) -> None:
        self.earns.add(member=member, etype=etype, points=points, day=day, occ=occ, rec=rec, txn=-1)


@dataclass
class _Segments:
    """Segment memberships, preallocated to the most that can be entered."""

    member: np.ndarray
    seg: np.ndarray
    eocc: np.ndarray
    erec: np.ndarray
    xocc: np.ndarray
    xrec: np.ndarray
    open: np.ndarray
    open_key: np.ndarray     # member * S + segment -> currently a member
    entry_n: np.ndarray      # entries wanted per night
    exit_n: np.ndarray
    n: int

    def built(self) -> dict[str, np.ndarray]:
        n = self.n
        return {"member": self.member[:n], "seg": self.seg[:n], "eocc": self.eocc[:n], "erec": self.erec[:n],
                "xocc": self.xocc[:n], "xrec": self.xrec[:n]}


@dataclass
class _Night:
    k: int
    late_ok: bool            # the last night gets no late rows (they would land after end_date)
    start: np.int64
    enrolled: np.ndarray
    act: np.ndarray
    act_idx: np.ndarray


def _members(rng: np.random.Generator, p: _Params, clock: _Clock) -> _Members:
    N, D = p.members, p.days
    inwin_frac = min(0.25, 0.001 * D)
    pre = rng.random(N) >= inwin_frac
    enroll_day = np.where(pre, rng.integers(-1095, 0, N), rng.integers(0, D, N))
    n_hosts = max(1, min(50, N // 10))
    hosts_raw = rng.choice(N, n_hosts, replace=False)
    pre[hosts_raw] = True
    enroll_day[hosts_raw] = rng.integers(-1095, -400, n_hosts)
    host_raw = np.zeros(N, bool)
    host_raw[hosts_raw] = True
    enroll_us = _daytime(rng, N)
    enroll_t = clock.at(enroll_day, enroll_us)
    order = np.argsort(enroll_t, kind="stable")  # member_id ascends with enrolment
    pre, enroll_day, enroll_t, is_host = pre[order], enroll_day[order], enroll_t[order], host_raw[order]
    enroll_rec = enroll_t + _lag(rng, N, 1, 60)
    not_host = ~is_host

    gender = rng.choice(4, N, p=(0.48, 0.47, 0.02, 0.03))  # 3 = NULL
    first_idx = rng.integers(0, len(FIRST_NAMES), N)
    last_idx = rng.integers(0, len(LAST_NAMES), N)
    null_profile = rng.random(N) < 0.002
    if N < 500:  # tiny programs get one too
        null_profile[np.flatnonzero(not_host)[:1]] = True
    null_phone = (rng.random(N) < 0.001) & ~null_profile
    weight = rng.lognormal(0.0, 1.0, N)
    weight[rng.random(N) < 0.01] *= 6.0  # heavy earners
    weight /= weight.mean()
    status, tier = _opening_status_and_tier(rng, pre, is_host)
    return _Members(pre=pre, enroll_day=enroll_day, enroll_t=enroll_t, enroll_rec=enroll_rec, is_host=is_host,
                    gender=gender, first_idx=first_idx, last_idx=last_idx, null_profile=null_profile,
                    null_phone=null_phone, weight=weight, status=status, tier=tier)


def _opening_status_and_tier(rng: np.random.Generator, pre: np.ndarray, is_host: np.ndarray):
    N = len(pre)
    status = np.where(pre, rng.choice(5, N, p=(0.86, 0.08, 0.02, 0.015, 0.025)), ACTIVE).astype(np.int8)
    status[is_host] = ACTIVE
    tier = np.where(pre, rng.choice(3, N, p=(0.68, 0.24, 0.08)) + 1, 1).astype(np.int8)
    # guarantee pools for the forced nightly status/tier changes, even for tiny programs
    cand = np.flatnonzero(pre & ~is_host)
    if len(cand) >= 3:
        if not np.isin(status[cand], (INACTIVE, SUSPENDED)).any():
            status[cand[0]] = INACTIVE
        if not (tier[cand] > 1).any():
            tier[cand[1]] = 2
        if (status[cand] == ACTIVE).sum() < 2:
            status[cand[1:3]] = ACTIVE
    return status, tier


def _store_weights(rng: np.random.Generator) -> np.ndarray:
    store_w = rng.dirichlet(np.ones(len(STORE_CITIES) + 1) * 2.0)
    store_w[0] += 0.15  # A123 is the flagship
    return store_w / store_w.sum()


def _opening_lots(s: _Sim) -> None:
    """One lot per pre-window member, occurred in the year before night 0."""
    rng, clock, m = s.rng, s.clock, s.m
    pm = np.flatnonzero(m.pre)
    lo = np.maximum(m.enroll_day[pm], -365)
    lot_day = lo + (rng.random(len(pm)) * (0 - lo)).astype(np.int64)
    lot_occ = clock.at(lot_day, _daytime(rng, len(pm)))
    lot_occ = np.maximum(lot_occ, m.enroll_rec[pm] + 60 * US)
    lot_day = np.where(lot_occ >= clock.midnight(lot_day + 1), lot_day + 1, lot_day)  # rare push
    lot_rec = lot_occ + _lag(rng, len(pm))
    # a few late ones on the eve of night 0, so night 0 also receives late rows
    eve = _pick(rng, np.flatnonzero(m.enroll_day[pm] < -1), min(3, max(0, len(pm) - 1)))
    if len(eve):
        lot_day[eve] = -1
        lot_occ[eve], lot_rec[eve] = clock.late(rng, lot_day[eve])
    is_acc = rng.random(len(pm)) < 0.7
    is_acc[eve] = True
    a = np.flatnonzero(is_acc)
    s.add_accruals(pm[a], lot_day[a], lot_occ[a], lot_rec[a],
                   amount=np.maximum((rng.lognormal(np.log(3000.0), 1.0, len(a)) * 100).astype(np.int64), 1000))
    b = np.flatnonzero(~is_acc)
    s.add_bonus(pm[b], CAMPAIGN, rng.choice([100, 200, 250, 500, 1000], len(b)), lot_day[b], lot_occ[b], lot_rec[b])


def _host_lots(s: _Sim) -> None:
    """Forced lots on hosts (never redeemed): expiries on every night, and lots expiring exactly
    D+30/60/90 for every night D."""
    rng, clock, D, V = s.rng, s.clock, s.p.days, s.p.validity
    hosts = s.m.hosts
    exp_days = np.arange(0, D + 91)
    f_day = exp_days - V
    f_member = hosts[exp_days % len(hosts)]
    f_occ = clock.at(f_day, _daytime(rng, len(f_day)))
    f_rec = f_occ + _lag(rng, len(f_day))
    f_acc = (exp_days % 2) == 0
    s.add_accruals(f_member[f_acc], f_day[f_acc], f_occ[f_acc], f_rec[f_acc])
    nf = int((~f_acc).sum())
    s.add_bonus(f_member[~f_acc], CAMPAIGN, rng.choice([150, 300, 500], nf), f_day[~f_acc], f_occ[~f_acc],
                f_rec[~f_acc])


def _initial_segments(s: _Sim) -> _Segments:
    rng, clock, m, N, D = s.rng, s.clock, s.m, s.p.members, s.p.days
    S = len(SEGMENTS)
    seg_p = np.array([x[2] for x in SEGMENTS])
    init = (rng.random((N, S)) < seg_p) & m.pre[:, None]
    im, iseg = np.nonzero(init)
    lo = np.maximum(m.enroll_day[im], -365)
    e_day = lo + (rng.random(len(im)) * (0 - lo)).astype(np.int64)
    e_occ = np.maximum(clock.at(e_day, _daytime(rng, len(im))), m.enroll_rec[im] + US)
    e_occ = np.minimum(e_occ, clock.midnight(0) - HOUR)
    entry_n = np.maximum(1, rng.poisson(0.002 * N, D))
    exit_n = np.maximum(1, rng.poisson(0.002 * N, D))
    cap = len(im) + int(entry_n.sum())
    g = _Segments(member=np.zeros(cap, np.int64), seg=np.zeros(cap, np.int64), eocc=np.zeros(cap, np.int64),
                  erec=np.zeros(cap, np.int64), xocc=np.full(cap, -1, np.int64), xrec=np.full(cap, -1, np.int64),
                  open=np.zeros(cap, bool), open_key=np.zeros(N * S, bool), entry_n=entry_n, exit_n=exit_n, n=0)
    k0 = len(im)
    g.member[:k0], g.seg[:k0], g.eocc[:k0] = im, iseg, e_occ
    g.erec[:k0] = e_occ + _lag(rng, k0, 1, 300)
    g.open[:k0] = True
    g.open_key[im * S + iseg] = True
    g.n = k0
    return g


def _night_state(s: _Sim, k: int) -> _Night:
    m = s.m
    enrolled = m.enroll_day < k
    act = enrolled & (m.status == ACTIVE)
    act_idx = np.flatnonzero(act)
    if len(act_idx) == 0:
        act_idx = np.flatnonzero(enrolled)
    return _Night(k=k, late_ok=k < s.p.days - 1, start=s.clock.midnight(k), enrolled=enrolled, act=act,
                  act_idx=act_idx)


def _night_accruals(s: _Sim, n8: _Night) -> None:
    """3-5% of active members transact; heavy earners several times."""
    rng, clock, p, k, N = s.rng, s.clock, s.p, n8.k, s.p.members
    weight = s.m.weight
    rate = 0.04 * weight if (k < p.days - 1 or p.last_night_activity == 1.0) else 0.04 * p.last_night_activity * weight
    cnt = rng.poisson(rate) * n8.act
    acc_m = np.repeat(np.arange(N), cnt)
    if len(acc_m) < 4:
        acc_m = np.concatenate([acc_m, _pick(rng, n8.act_idx, 4 - len(acc_m))])
    acc_m = rng.permutation(acc_m)
    n = len(acc_m)
    occ = clock.at(k, _daytime(rng, n))
    rec = occ + _lag(rng, n)
    nl = _late_count(n, 0.005, 3, n8.late_ok)
    if nl:
        occ[:nl], rec[:nl] = clock.late(rng, np.full(nl, k))
    s.add_accruals(acc_m, np.full(n, k), occ, rec)


def _night_bonuses(s: _Sim, n8: _Night) -> None:
    """Campaign and manual bonuses, and the welcome bonus of members enrolling tonight."""
    rng, clock, k, act_idx = s.rng, s.clock, n8.k, n8.act_idx
    for etype, rate, pts in ((CAMPAIGN, 0.004, (100, 200, 250, 500)), (MANUAL, 0.0003, (50, 100, 250, 500, 1000))):
        bm = act_idx[rng.random(len(act_idx)) < rate]
        if len(bm) == 0:
            bm = _pick(rng, act_idx, 1)
        n = len(bm)
        occ = clock.at(k, _daytime(rng, n))
        rec = occ + _lag(rng, n, 1, 600)
        nl = _late_count(n, 0.01, 1, n8.late_ok and etype == CAMPAIGN)
        if nl:
            occ[:nl], rec[:nl] = clock.late(rng, np.full(nl, k))
        s.add_bonus(bm, etype, rng.choice(pts, n), np.full(n, k), occ, rec)
    newm = np.flatnonzero(s.m.enroll_day == k)
    if len(newm):
        occ = s.m.enroll_t[newm] + _lag(rng, len(newm), 30, 300)
        s.add_bonus(newm, CAMPAIGN, np.full(len(newm), 100), np.full(len(newm), k), occ,
                    occ + _lag(rng, len(newm), 1, 60))


def _tier_changes(s: _Sim, n8: _Night) -> np.ndarray:
    """Upgrades and downgrades (an upgrade often comes with a tier_bonus); returns who changed."""
    rng, clock, k, N, tier, status = s.rng, s.clock, n8.k, s.p.members, s.m.tier, s.m.status
    busy = np.zeros(N, bool)
    ups = _pick(rng, np.flatnonzero(n8.enrolled & (tier < 3) & (status <= SUSPENDED)), max(1, rng.poisson(0.0008 * N)))
    busy[ups] = True
    downs = _pick(rng, np.flatnonzero(n8.enrolled & (tier > 1) & ~busy), max(1, rng.poisson(0.0004 * N)))
    busy[downs] = True
    tm = np.concatenate([ups, downs])
    frm = tier[tm].astype(np.int64)
    jump = (frm[: len(ups)] == 1) & (rng.random(len(ups)) < 0.1)
    to = np.concatenate([frm[: len(ups)] + 1 + jump, frm[len(ups):] - 1])
    n = len(tm)
    occ = clock.at(k, _daytime(rng, n))
    rec = occ + _lag(rng, n, 1, 120)
    if n8.late_ok and len(ups) >= 2:
        occ[1], rec[1] = (x[0] for x in clock.late(rng, np.array([k])))
    s.tier_ch.add(member=tm, from_=frm, to=to, occ=occ, rec=rec)
    tier[tm] = to
    nu = len(ups)
    bonus = rng.random(nu) < 0.6
    if nu:
        bonus[0] = True
    bi = np.flatnonzero(bonus)
    b_occ = occ[bi] + _lag(rng, len(bi), 0.1, 5)
    s.add_bonus(ups[bi], TIER_BONUS, np.where(to[bi] >= 3, 1000, 500), np.full(len(bi), k),
                b_occ, np.maximum(rec[bi], b_occ) + _lag(rng, len(bi), 0.1, 5))
    return busy


def _status_changes(s: _Sim, n8: _Night, busy: np.ndarray) -> None:
    """Reactivations, suspensions, deactivations and a few blocked/cancelled, each member once a night."""
    rng, clock, k, N, status = s.rng, s.clock, n8.k, s.p.members, s.m.status
    not_host = s.m.not_host
    free = n8.enrolled & not_host & ~busy
    actv = _pick(rng, np.flatnonzero(free & ((status == INACTIVE) | (status == SUSPENDED))),
                 max(1, rng.poisson(0.0005 * N)))
    busy[actv] = True
    free = n8.enrolled & not_host & ~busy
    susp = _pick(rng, np.flatnonzero(free & (status == ACTIVE)), max(1, rng.poisson(0.0002 * N)))
    busy[susp] = True
    free = n8.enrolled & not_host & ~busy
    deact = _pick(rng, np.flatnonzero(free & (status == ACTIVE)), rng.poisson(0.0004 * N))
    busy[deact] = True
    free = n8.enrolled & not_host & ~busy
    gone = _pick(rng, np.flatnonzero(free & (status <= INACTIVE)), rng.poisson(0.00005 * N))
    sm = np.concatenate([actv, susp, deact, gone])
    sto = np.concatenate([np.full(len(actv), ACTIVE), np.full(len(susp), SUSPENDED), np.full(len(deact), INACTIVE),
                          rng.choice([BLOCKED, CANCELLED], len(gone))])
    n = len(sm)
    occ = clock.at(k, _daytime(rng, n))
    rec = occ + _lag(rng, n, 1, 120)
    if n8.late_ok and len(actv) >= 2:
        occ[1], rec[1] = (x[0] for x in clock.late(rng, np.array([k])))
    s.status_ch.add(member=sm, from_=status[sm].astype(np.int64), to=sto, occ=occ, rec=rec)
    status[sm] = sto


def _segment_moves(s: _Sim, n8: _Night, g: _Segments) -> None:
    """Exits of memberships entered before tonight, then entries (never re-entering tonight)."""
    rng, clock, k, S = s.rng, s.clock, n8.k, len(SEGMENTS)
    open_idx = np.flatnonzero(g.open[:g.n] & (g.erec[:g.n] < n8.start))
    ex = _pick(rng, open_idx, g.exit_n[k])
    occ = clock.at(k, _daytime(rng, len(ex)))
    g.xocc[ex], g.xrec[ex] = occ, occ + _lag(rng, len(ex), 1, 300)
    g.open[ex] = False
    exited_keys = g.member[ex] * S + g.seg[ex]
    g.open_key[exited_keys] = False
    want = int(g.entry_n[k])
    cm = rng.choice(np.flatnonzero(n8.enrolled), want * 2 + 4)
    cs = rng.integers(0, S, len(cm))
    key = cm * S + cs
    _, first_pos = np.unique(key, return_index=True)
    first_pos = np.sort(first_pos)
    first_pos = first_pos[~g.open_key[key[first_pos]] & ~np.isin(key[first_pos], exited_keys)][:want]
    ne = len(first_pos)
    occ = clock.at(k, _daytime(rng, ne))
    rec = occ + _lag(rng, ne, 1, 300)
    if n8.late_ok and ne >= 2:
        occ[1], rec[1] = (x[0] for x in clock.late(rng, np.array([k])))
    sl = slice(g.n, g.n + ne)
    g.member[sl], g.seg[sl], g.eocc[sl], g.erec[sl] = cm[first_pos], cs[first_pos], occ, rec
    g.open[sl] = True
    g.open_key[key[first_pos]] = True
    g.n += ne


def _redemption_candidates(s: _Sim, n8: _Night) -> tuple[int, np.ndarray, int]:
    """Who may redeem tonight (resolved once every lot is known) and how many redemptions to aim for."""
    red_pool = np.flatnonzero(n8.act & s.m.not_host)
    target = max(2, int(s.rng.poisson(0.003 * len(red_pool))))
    return n8.k, _pick(s.rng, red_pool, 3 * target + 6), target


@dataclass
class _Lots:
    """Every earn lot sorted by member, then expiry, then recorded_at: the FIFO order redemptions consume."""

    order: np.ndarray        # sorted position -> index into the earns
    member: np.ndarray
    exp: np.ndarray
    occ: np.ndarray
    rec: np.ndarray
    rem: np.ndarray          # points left, updated as redemptions consume
    starts: np.ndarray       # member -> first sorted position


def _lots(E: dict[str, np.ndarray], validity: int, members: int) -> tuple[_Lots, np.ndarray]:
    lot_exp = E["day"] + validity
    lorder = np.lexsort((E["rec"], lot_exp, E["member"]))
    s_member = E["member"][lorder]
    lots = _Lots(order=lorder, member=s_member, exp=lot_exp[lorder], occ=E["occ"][lorder], rec=E["rec"][lorder],
                 rem=E["points"][lorder].copy(), starts=np.searchsorted(s_member, np.arange(members + 1)))
    return lots, lot_exp


class _Redemptions:
    """Redemptions and, per consumed lot, the points each took (``d_*``, lot = index into the earns)."""

    COSTS = np.array([c[2] for c in CATALOGUE])
    WEIGHTS = 1.0 / np.sqrt(COSTS)

    def __init__(self) -> None:
        self.cols: dict[str, list] = {n: [] for n in ("member", "item", "points", "occ", "rec", "day", "minexp")}
        self.d_red: list[int] = []
        self.d_lot: list[int] = []
        self.d_pts: list[int] = []

    def redeem(self, lots: _Lots, mem: int, k: int, occ: int, rec: int, draw: float) -> bool:
        """One redemption of an affordable item, FIFO over the member's usable lots, if any."""
        s, e = lots.starts[mem], lots.starts[mem + 1]
        ok = (lots.rec[s:e] < rec) & (lots.occ[s:e] < occ) & (lots.exp[s:e] >= k + 2) & (lots.rem[s:e] > 0)
        avail = int(lots.rem[s:e][ok].sum())
        afford = np.flatnonzero(self.COSTS <= avail)
        if len(afford) == 0:
            return False
        w = self.WEIGHTS[afford]
        pos_ = min(int(np.searchsorted(np.cumsum(w) / w.sum(), draw)), len(afford) - 1)
        item = int(afford[pos_])
        need = int(self.COSTS[item])
        rid = len(self.cols["member"])
        minexp = None
        for pos in np.flatnonzero(ok):
            take = min(need, int(lots.rem[s + pos]))
            lots.rem[s + pos] -= take
            need -= take
            self.d_red.append(rid)
            self.d_lot.append(int(lots.order[s + pos]))
            self.d_pts.append(take)
            minexp = int(lots.exp[s + pos]) if minexp is None else min(minexp, int(lots.exp[s + pos]))
            if need == 0:
                break
        for name, value in (("member", int(mem)), ("item", item), ("points", int(self.COSTS[item])),
                            ("occ", int(occ)), ("rec", int(rec)), ("day", k), ("minexp", minexp)):
            self.cols[name].append(value)
        return True

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        R = {n: np.array(v, dtype=np.int64) for n, v in self.cols.items()}
        return R, np.array(self.d_red, np.int64), np.array(self.d_lot, np.int64), np.array(self.d_pts, np.int64)


def _redemptions(s: _Sim, lots: _Lots, plan: list[tuple[int, np.ndarray, int]]) -> _Redemptions:
    """Each night's candidates in recorded_at order until the night's target is met."""
    rng, clock, D = s.rng, s.clock, s.p.days
    out = _Redemptions()
    for k, cands, target in plan:
        m = len(cands)
        tod = _daytime(rng, m)
        tod[0] = int(rng.uniform(8, 11) * HOUR)  # an early one, so a same-night reversal fits
        occ = clock.at(k, tod)
        rec = occ + _lag(rng, m, 1, 120)
        late = (rng.random(m) < 0.02) & (k < D - 1)
        late[0] = False
        if late.any():
            lo_, lr_ = clock.late(rng, np.full(int(late.sum()), k))
            occ[late], rec[late] = lo_, lr_
        chosen = rng.random(m)
        done = 0
        for j in np.argsort(rec, kind="stable"):
            if done >= target:
                break
            if out.redeem(lots, cands[j], k, occ[j], rec[j], chosen[j]):
                done += 1
    return out


def _reversals(s: _Sim, R: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Reversals on a night between the redemption and the day before its earliest lot expires;
    then one on every night that has none yet, where a recent redemption allows it."""
    rng, clock, D = s.rng, s.clock, s.p.days
    nR = len(R["member"])
    rev_occ = np.full(nR, -1, np.int64)
    rev_rec = np.full(nR, -1, np.int64)
    rec_day = np.where(R["rec"] >= clock.midnight(R["day"] + 1), R["day"] + 1, R["day"])

    def try_reverse(i: int, night: int) -> bool:
        if rev_occ[i] >= 0 or night < rec_day[i] or night > R["minexp"][i] - 1 or night > D - 1:
            return False
        if night == rec_day[i]:
            lo_t = R["rec"][i] + 10 * 60 * US
            hi_t = clock.midnight(night) + int(23.66 * HOUR)
            if lo_t >= hi_t:
                return False
            t = int(lo_t + rng.random() * (hi_t - lo_t))
        else:
            t = int(clock.at(night, _daytime(rng, 1))[0])
        rev_occ[i] = t
        rev_rec[i] = t + int(rng.uniform(1, 60) * US)
        return True

    if nR:
        wants = rng.random(nR) < 0.08
        delays = rng.integers(0, 4, nR)
        for i in np.flatnonzero(wants):
            try_reverse(int(i), int(R["day"][i] + delays[i]))
        have = np.zeros(D, bool)
        have[_night_of(clock, rev_rec[rev_occ >= 0], D)] = True
        for k in range(D):
            if have[k]:
                continue
            for i in np.flatnonzero((R["day"] <= k) & (R["day"] >= k - 5) & (rev_occ < 0)):
                if try_reverse(int(i), k):
                    break
    return rev_occ, rev_rec


def _ledger(s: _Sim, E, lot_exp, R, d_red, d_lot, d_pts, rev_occ, rev_rec) -> dict[str, np.ndarray]:
    """Earns, one redeem entry per consumed lot, their reversals, and the expiry of what every lot
    expiring inside the generated nights still holds."""
    rng, clock, D = s.rng, s.clock, s.p.days
    nE, nR = len(E["member"]), len(R["member"])
    net = E["points"].copy()
    np.subtract.at(net, d_lot, d_pts)
    rv = (rev_occ >= 0)[d_red] if len(d_red) else np.zeros(0, bool)
    np.add.at(net, d_lot[rv], d_pts[rv])
    xl = np.flatnonzero((lot_exp >= 0) & (lot_exp <= D - 1) & (net > 0))
    x_occ = clock.midnight(lot_exp[xl]) + (rng.uniform(1, 29 * 60, len(xl)) * US).astype(np.int64)
    x_rec = x_occ + _lag(rng, len(xl), 0.1, 30)
    rvi = np.flatnonzero(rv)
    rest = len(d_red) + len(rvi) + len(xl)
    return {
        "kind": np.concatenate([np.full(nE, EARN), np.full(len(d_red), REDEEM), np.full(len(rvi), REVERSAL),
                                np.full(len(xl), EXPIRE)]),
        "member": np.concatenate([E["member"], R["member"][d_red] if nR else d_red,
                                  R["member"][d_red[rvi]] if nR else rvi, E["member"][xl]]),
        "points": np.concatenate([E["points"], -d_pts, d_pts[rvi], -net[xl]]),
        "etype": np.concatenate([E["etype"], np.full(rest, -1)]),
        "txn": np.concatenate([E["txn"], np.full(rest, -1)]),
        "red": np.concatenate([np.full(nE, -1), d_red, d_red[rvi], np.full(len(xl), -1)]),
        "lot": np.concatenate([np.full(nE, -1), d_lot, d_lot[rvi], xl]),
        "exp": np.concatenate([lot_exp, np.full(rest, 0)]),
        "occ": np.concatenate([E["occ"], R["occ"][d_red] if nR else d_red, rev_occ[d_red[rvi]] if nR else rvi, x_occ]),
        "rec": np.concatenate([E["rec"], R["rec"][d_red] if nR else d_red, rev_rec[d_red[rvi]] if nR else rvi, x_rec]),
    }


def _simulate(p: _Params) -> dict:
    """The whole program as numpy arrays. Steps draw from one RNG in a fixed order, so reordering
    them changes every row after the first moved draw."""
    rng = np.random.default_rng(p.seed)
    clock = _Clock(p.first, p.days, p.tz)
    s = _Sim(p=p, rng=rng, clock=clock, m=_members(rng, p, clock))
    s.store_w = _store_weights(rng)
    _opening_lots(s)
    _host_lots(s)
    segments = _initial_segments(s)
    plan: list[tuple[int, np.ndarray, int]] = []
    for k in range(p.days):
        night = _night_state(s, k)
        _night_accruals(s, night)
        _night_bonuses(s, night)
        busy = _tier_changes(s, night)
        _status_changes(s, night, busy)
        _segment_moves(s, night, segments)
        plan.append(_redemption_candidates(s, night))
    E = s.earns.build()
    T = s.txns.build()
    lots, lot_exp = _lots(E, p.validity, p.members)
    R, d_red, d_lot, d_pts = _redemptions(s, lots, plan).arrays()
    rev_occ, rev_rec = _reversals(s, R)
    L = _ledger(s, E, lot_exp, R, d_red, d_lot, d_pts, rev_occ, rev_rec)
    m = s.m
    return {
        "clock": clock, "N": p.members, "enroll_t": m.enroll_t, "enroll_rec": m.enroll_rec, "gender": m.gender,
        "first_idx": m.first_idx, "last_idx": m.last_idx, "null_profile": m.null_profile, "null_phone": m.null_phone,
        "status": m.status, "tier": m.tier, "E": E, "T": T, "R": R, "rev_occ": rev_occ, "rev_rec": rev_rec, "L": L,
        "tier_ch": s.tier_ch.build(), "status_ch": s.status_ch.build(), "seg": segments.built(),
    }


def _night_of(clock: _Clock, t: np.ndarray, days: int) -> np.ndarray:
    """Night index whose window holds each UTC time (clipped to 0..days-1)."""
    bounds = clock.mid[-clock.dmin: -clock.dmin + days + 1]
    return np.clip(np.searchsorted(bounds, t, side="right") - 1, 0, days - 1)


# --------------------------------------------------------------------------------------------
# arrow tables and COPY


def _ts(a: np.ndarray, mask: np.ndarray | None = None):
    import pyarrow as pa

    return pa.array(np.asarray(a, np.int64), mask=mask).cast(pa.timestamp("us", tz="UTC"))


def _num(a, mask=None):
    import pyarrow as pa

    return pa.array(np.asarray(a, np.int64), mask=mask)


def _ids(prefix: str, n: np.ndarray, width: int):
    import pyarrow as pa
    import pyarrow.compute as pc

    s = pc.utf8_lpad(pa.array(np.asarray(n, np.int64)).cast(pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, s, "")


def _take(values, idx, mask=None):
    import pyarrow as pa
    import pyarrow.compute as pc

    out = pc.take(pa.array(list(values)), pa.array(np.asarray(idx, np.int64)))
    if mask is not None and mask.any():
        out = pc.if_else(pa.array(mask), pa.scalar(None, pa.string()), out)
    return out


def _const(v, n):
    import pyarrow as pa

    return pa.repeat(pa.scalar(v, pa.string()), n)


def _date_col(first: dt.date, day_idx: np.ndarray, mask: np.ndarray):
    import pyarrow as pa

    ords = (first.toordinal() + np.asarray(day_idx, np.int64) - EPOCH_ORDINAL).astype(np.int32)
    return pa.array(ords, type=pa.int32(), mask=mask).cast(pa.date32())


def _id_or_null(ids, idx: np.ndarray, n: int):
    """``ids[idx]``, NULL where idx < 0 (no ids at all: all NULL)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not len(ids):
        return pa.nulls(n, pa.string())
    return pc.if_else(pa.array(idx < 0), pa.scalar(None, pa.string()), pc.take(ids, pa.array(np.maximum(idx, 0))))


def _members_table(sim: dict, p: _Params, mid: np.ndarray, base: int, tag: str):
    import pyarrow as pa
    import pyarrow.compute as pc

    N = sim["N"]
    first = _take(FIRST_NAMES, sim["first_idx"])
    last = _take(LAST_NAMES, sim["last_idx"])
    name = pc.binary_join_element_wise(first, last, " ")
    email = pc.binary_join_element_wise(pc.utf8_lower(first), pc.binary_join_element_wise(
        pc.utf8_lower(last), pc.binary_join_element_wise(pa.array(mid).cast(pa.string()), "@example.com", ""), ""), ".")
    nulls = pa.array(sim["null_profile"])
    name = pc.if_else(nulls, pa.scalar(None, pa.string()), name)
    email = pc.if_else(nulls, pa.scalar(None, pa.string()), email)
    # unique Indian mobile numbers: a bijection of the member index onto 6000000000..9999999999
    span = 4_000_000_000
    phone_n = 6_000_000_000 + ((np.arange(N, dtype=np.int64) + base) * 2_654_435_761 + p.seed) % span
    phone = pc.binary_join_element_wise("+91", pa.array(phone_n).cast(pa.string()), "")
    phone = pc.if_else(pa.array(sim["null_phone"]), pa.scalar(None, pa.string()), phone)
    tch, sch = sim["tier_ch"], sim["status_ch"]
    updated = sim["enroll_rec"].copy()
    np.maximum.at(updated, tch["member"], tch["rec"])
    np.maximum.at(updated, sch["member"], sch["rec"])
    return ("loyalty.members", pa.table({
        "member_id": _num(mid), "program_id": _const(p.program_id, N),
        "relation_reference": _ids(f"{tag}REL-", np.arange(1, N + 1), 8),
        "phone": phone, "email": email, "name": name,
        "gender": _take(("male", "female", "other", ""), sim["gender"], sim["gender"] == 3),
        "status": _take(STATUSES, sim["status"]), "tier": _take(TIERS, sim["tier"].astype(np.int64) - 1),
        "enrolled_at": _ts(sim["enroll_t"]), "recorded_at": _ts(sim["enroll_rec"]), "updated_at": _ts(updated),
    }))


def _by_recorded(rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, rank) of rows by recorded_at: ids follow recorded_at."""
    order = np.argsort(rec, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return order, rank


def _transactions_table(sim: dict, pid: str, member_id, tag: str, currency: str):
    import pyarrow as pa

    T = sim["T"]
    tord, trank = _by_recorded(T["rec"])
    txn_id_of = _ids(f"{tag}TX-", trank + 1, 9)
    store_codes = [f"{tag}A123"] + [f"{tag}S{i:03d}" for i in range(1, len(STORE_CITIES) + 1)]
    table = ("loyalty.transactions", pa.table({
        "transaction_id": txn_id_of, "program_id": _const(pid, len(tord)), "member_id": _num(member_id(T["member"])),
        "amount": _decimal(T["amount"]), "currency": _const(currency, len(tord)),
        "store_id": _take(store_codes, np.maximum(T["store"], 0), T["store"] < 0),
        "channel": _take(CHANNELS, T["channel"]), "occurred_at": _ts(T["occ"]), "recorded_at": _ts(T["rec"]),
    }).take(pa.array(tord)))
    return table, txn_id_of, store_codes


def _redemptions_table(sim: dict, pid: str, member_id, tag: str):
    import pyarrow as pa

    R = sim["R"]
    nR = len(R["member"])
    rord, rrank = _by_recorded(R["rec"])
    red_id_of = _ids(f"{tag}RD-", rrank + 1, 6)
    rev = sim["rev_occ"] >= 0
    table = ("loyalty.redemptions", pa.table({
        "redemption_id": red_id_of, "program_id": _const(pid, nR), "member_id": _num(member_id(R["member"])),
        "points": _num(R["points"]), "item_sku": _take([c[0] for c in CATALOGUE], R["item"]),
        "item_name": _take([c[1] for c in CATALOGUE], R["item"]),
        "status": _take(("completed", "reversed"), rev.astype(np.int64)),
        "redeemed_at": _ts(R["occ"]), "recorded_at": _ts(R["rec"]), "reversed_at": _ts(sim["rev_occ"], ~rev),
    }).take(pa.array(rord)))
    return table, red_id_of


def _ledger_table(sim: dict, p: _Params, member_id, entry_base: int, txn_id_of, red_id_of):
    """Entry ids by recorded_at (earns first on ties); lot_entry_id points at the earn's new id."""
    import pyarrow as pa

    L = sim["L"]
    nL = len(L["kind"])
    lord = np.lexsort((L["kind"], L["rec"]))
    eid = np.empty(nL, np.int64)
    eid[lord] = entry_base + 1 + np.arange(nL)
    is_earn = L["kind"] == EARN
    lot_eid = np.where(L["lot"] >= 0, eid[np.maximum(L["lot"], 0)], 0)
    return ("loyalty.points_ledger", pa.table({
        "entry_id": _num(eid), "program_id": _const(p.program_id, nL), "member_id": _num(member_id(L["member"])),
        "entry_type": _take(ENTRY_TYPES, L["kind"]), "points": _num(L["points"]),
        "earning_type": _take(EARNING_TYPES, np.maximum(L["etype"], 0), ~is_earn),
        "transaction_id": _id_or_null(txn_id_of, L["txn"], nL),
        "redemption_id": _id_or_null(red_id_of, L["red"], nL),
        "lot_entry_id": _num(lot_eid, is_earn), "expires_on": _date_col(p.first, L["exp"], ~is_earn),
        "occurred_at": _ts(L["occ"]), "recorded_at": _ts(L["rec"]),
    }).take(pa.array(lord)))


def _change_table(acc: dict[str, np.ndarray], names: tuple[str, ...], table: str, base: int, member_id):
    """Tier or status changes, ids by recorded_at (tiers are stored 1-based)."""
    import pyarrow as pa

    n = len(acc["member"])
    o = np.argsort(acc["rec"], kind="stable")
    shift = 1 if names is TIERS else 0
    cols = ("from_tier", "to_tier") if names is TIERS else ("from_status", "to_status")
    return (table, pa.table({
        "change_id": _num(base + 1 + np.arange(n)), "member_id": _num(member_id(acc["member"][o])),
        cols[0]: _take(names, acc["from_"][o] - shift), cols[1]: _take(names, acc["to"][o] - shift),
        "changed_at": _ts(acc["occ"][o]), "recorded_at": _ts(acc["rec"][o]),
    }))


def _segments_table(sim: dict, pid: str, member_id, base: int):
    import pyarrow as pa

    G = sim["seg"]
    n = len(G["member"])
    o = np.argsort(G["erec"], kind="stable")
    xm = G["xocc"][o] < 0
    return ("loyalty.segment_memberships", pa.table({
        "membership_id": _num(base + 1 + np.arange(n)), "program_id": _const(pid, n),
        "member_id": _num(member_id(G["member"][o])), "segment_id": _take([s[0] for s in SEGMENTS], G["seg"][o]),
        "entered_at": _ts(G["eocc"][o]), "entered_recorded_at": _ts(G["erec"][o]),
        "exited_at": _ts(G["xocc"][o], xm), "exited_recorded_at": _ts(G["xrec"][o], xm),
    }))


def _tables(sim: dict, p: _Params, *, id_base: dict[str, int], tag: str, currency: str) -> tuple[dict, list[str]]:
    """Every table as (qualified name, Arrow table) in COPY column order, and the store codes."""
    pid = p.program_id
    mid = id_base["member"] + 1 + np.arange(sim["N"])

    def member_id(idx):
        return mid[np.asarray(idx, np.int64)]

    out: dict = {"members": _members_table(sim, p, mid, id_base["member"], tag)}
    out["transactions"], txn_id_of, store_codes = _transactions_table(sim, pid, member_id, tag, currency)
    out["redemptions"], red_id_of = _redemptions_table(sim, pid, member_id, tag)
    out["points_ledger"] = _ledger_table(sim, p, member_id, id_base["entry"], txn_id_of, red_id_of)
    out["tier_change"] = _change_table(sim["tier_ch"], TIERS, "loyalty.member_tier_changes",
                                       id_base["tier_change"], member_id)
    out["status_change"] = _change_table(sim["status_ch"], STATUSES, "loyalty.member_status_changes",
                                         id_base["status_change"], member_id)
    out["segment_memberships"] = _segments_table(sim, pid, member_id, id_base["membership"])
    return out, store_codes


def _decimal(cents: np.ndarray):
    import pyarrow as pa

    raw = np.zeros(2 * len(cents), np.int64)
    raw[0::2] = cents  # non-negative: the high word stays 0
    return pa.Array.from_buffers(pa.decimal128(14, 2), len(cents), [None, pa.py_buffer(raw)])


def _copy(cur, table: str, tbl, pool: ThreadPoolExecutor, chunk: int = 50_000,
          on_rows: Callable[[int], None] = lambda n: None) -> None:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    opts = pacsv.WriteOptions(include_header=False, batch_size=16_384)

    def fmt(batch):
        sink = pa.BufferOutputStream()
        pacsv.write_csv(batch, sink, opts)
        return sink.getvalue()

    cols = ", ".join(tbl.column_names)
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN WITH (FORMAT csv)") as cp:
        pending = None
        for batch in tbl.to_batches(max_chunksize=chunk):
            nxt = pool.submit(fmt, batch), batch.num_rows  # format the next chunk while the server ingests
            if pending is not None:
                cp.write(memoryview(pending[0].result()))
                on_rows(pending[1])
            pending = nxt
        if pending is not None:
            cp.write(memoryview(pending[0].result()))
            on_rows(pending[1])


# --------------------------------------------------------------------------------------------
# public entry point

_DELETE_ORDER = (
    "DELETE FROM loyalty.points_ledger WHERE program_id = %(p)s",
    "DELETE FROM loyalty.transactions WHERE program_id = %(p)s",
    "DELETE FROM loyalty.redemptions WHERE program_id = %(p)s",
    "DELETE FROM loyalty.segment_memberships WHERE program_id = %(p)s",
    "DELETE FROM loyalty.member_tier_changes WHERE member_id IN (SELECT member_id FROM loyalty.members WHERE program_id = %(p)s)",
    "DELETE FROM loyalty.member_status_changes WHERE member_id IN (SELECT member_id FROM loyalty.members WHERE program_id = %(p)s)",
    "DELETE FROM loyalty.members WHERE program_id = %(p)s",
    "DELETE FROM loyalty.segments WHERE program_id = %(p)s",
    "DELETE FROM loyalty.stores WHERE program_id = %(p)s",
    "DELETE FROM loyalty.tiers WHERE program_id = %(p)s",
    "DELETE FROM loyalty.programs WHERE program_id = %(p)s",
)
_ALL_TABLES = ("points_ledger", "transactions", "redemptions", "segment_memberships", "member_tier_changes",
               "member_status_changes", "members", "segments", "stores", "tiers", "programs")
_SEQUENCES = (("members", "member_id"), ("points_ledger", "entry_id"), ("member_tier_changes", "change_id"),
              ("member_status_changes", "change_id"), ("segment_memberships", "membership_id"))


_SECONDARY_INDEXES = (
    "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'loyalty'::regnamespace "
    "AND NOT i.indisunique AND NOT i.indisprimary "
    "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY 1")
_FOREIGN_KEYS = (
    "SELECT conrelid::regclass::text, quote_ident(conname), pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE contype = 'f' AND connamespace = 'loyalty'::regnamespace ORDER BY 1, 2")


def _drop_secondary(cur) -> list[str]:
    """Drop the loyalty tables' non-unique indexes and their foreign keys (primary keys and unique
    constraints stay, so the COPY is still checked for duplicates); returns the statements that
    recreate them, as they were, indexes first."""
    indexes = cur.execute(_SECONDARY_INDEXES).fetchall()
    keys = cur.execute(_FOREIGN_KEYS).fetchall()
    for table, name, _ in keys:
        cur.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    for name, _ in indexes:
        cur.execute(f"DROP INDEX {name}")
    return [definition for _, definition in indexes] + [f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
                                                        for table, name, definition in keys]


def generate(dsn: str, *, program_id: str = "demo", members: int = 10_000, days: int = 60, seed: int = 42,
             end_date: dt.date | None = None, time_zone: str = "Asia/Kolkata", replace: bool = True,
             last_night_activity: float = 1.0, progress_to: TextIO | None = None) -> GenerationSummary:
    """Write a deterministic synthetic loyalty program into the database at `dsn` (see module doc).

    ``last_night_activity`` multiplies the accrual rate of the last night only (default 1.0: the
    usual 3-5% of active members transact); the benchmark uses it to put ~1 event per member in
    the night it syncs. With the default the output is unchanged.

    Each phase (simulating, building tables, COPY per table, VACUUM ANALYZE) shows its progress on
    ``progress_to`` (default stderr; ``loyalty_moengage.progress``: a redrawn line on a terminal,
    plain lines elsewhere).
    """
    from loyalty_moengage.db import connect

    t0 = time.perf_counter()

    def phase(name: str, **kwargs: Any) -> Progress:
        return Progress(f"generator {program_id}: {name}", stream=progress_to, **kwargs)

    if members < 10:
        raise ValueError("members must be >= 10")
    if not 1 <= days <= 1000:
        raise ValueError("days must be within 1..1000")
    tz = ZoneInfo(time_zone)
    if end_date is None:
        end_date = dt.datetime.now(tz).date()
    first = end_date - dt.timedelta(days=days)
    if last_night_activity <= 0:
        raise ValueError("last_night_activity must be > 0")
    params = _Params(program_id=program_id, members=members, days=days, seed=seed, first=first, tz=tz,
                     last_night_activity=last_night_activity)

    with connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('loyalty.programs')").fetchone()[0] is None:
            from loyalty_moengage.db import apply_schema

            conn.rollback()
            apply_schema(dsn)
        cur = conn.cursor()
        exists = cur.execute("SELECT 1 FROM loyalty.programs WHERE program_id = %s", (program_id,)).fetchone()
        if exists and not replace:
            raise ValueError(f"program {program_id!r} already exists (pass replace=True)")
        others = cur.execute("SELECT count(*) FROM loyalty.programs WHERE program_id <> %s", (program_id,)).fetchone()[0]
        if exists:
            if others == 0:
                cur.execute("SAVEPOINT trunc")
                try:
                    cur.execute("TRUNCATE " + ", ".join(f"loyalty.{t}" for t in _ALL_TABLES))
                    cur.execute("RELEASE SAVEPOINT trunc")
                except Exception:  # e.g. another schema references these tables
                    cur.execute("ROLLBACK TO SAVEPOINT trunc")
                    for sql in _DELETE_ORDER:
                        cur.execute(sql, {"p": program_id})
            else:
                for sql in _DELETE_ORDER:
                    cur.execute(sql, {"p": program_id})
        id_base = {
            "member": cur.execute("SELECT coalesce(max(member_id), 0) FROM loyalty.members").fetchone()[0],
            "entry": cur.execute("SELECT coalesce(max(entry_id), 0) FROM loyalty.points_ledger").fetchone()[0],
            "tier_change": cur.execute("SELECT coalesce(max(change_id), 0) FROM loyalty.member_tier_changes").fetchone()[0],
            "status_change": cur.execute("SELECT coalesce(max(change_id), 0) FROM loyalty.member_status_changes").fetchone()[0],
            "membership": cur.execute("SELECT coalesce(max(membership_id), 0) FROM loyalty.segment_memberships").fetchone()[0],
        }
        tag = "" if others == 0 else f"{program_id.upper()}-"

        with phase(f"simulating {members:,} members over {days} nights") as step:
            sim = _simulate(params)
            step.finish(f"{len(sim['L']['kind']):,} ledger entries, {len(sim['T']['member']):,} transactions")
        with phase("building tables"):
            tables, store_codes = _tables(sim, params, id_base=id_base, tag=tag, currency="INR")
        t_build = time.perf_counter() - t0

        name = "Demo Loyalty" if program_id == "demo" else program_id.replace("_", " ").title() + " Loyalty"
        cur.execute(
            "INSERT INTO loyalty.programs (program_id, name, time_zone, earn_rate, currency, default_country, "
            "points_validity_days) VALUES (%s, %s, %s, %s, 'INR', 'IN', %s)",
            (program_id, name, time_zone, params.earn_rate_e4 / 10_000, params.validity))
        cur.executemany("INSERT INTO loyalty.tiers (program_id, tier, rank) VALUES (%s, %s, %s)",
                        [(program_id, t, i + 1) for i, t in enumerate(TIERS)])
        cur.executemany("INSERT INTO loyalty.stores (program_id, store_id, name) VALUES (%s, %s, %s)",
                        [(program_id, code, f"{name} {city}") for code, city in zip(store_codes, ("Flagship",) + STORE_CITIES)])
        cur.executemany("INSERT INTO loyalty.segments (program_id, segment_id, name) VALUES (%s, %s, %s)",
                        [(program_id, s[0], s[1]) for s in SEGMENTS])
        # Alone in its database, the program loads without the secondary indexes and foreign keys,
        # each rebuilt once after the COPY (in this transaction) rather than row by row.
        rebuild = _drop_secondary(cur) if others == 0 else []
        with ThreadPoolExecutor(1) as pool:
            for key in ("members", "transactions", "redemptions", "points_ledger", "tier_change", "status_change",
                        "segment_memberships"):
                table, tbl = tables[key]
                with phase(f"COPY {table}", total=tbl.num_rows, unit="rows") as step:
                    _copy(cur, table, tbl, pool, on_rows=step.advance)
        if rebuild:
            with phase("building indexes and foreign keys", total=len(rebuild), unit="objects") as step:
                for sql in rebuild:
                    cur.execute(sql)
                    step.advance()
        for table, col in _SEQUENCES:
            cur.execute(f"SELECT setval(pg_get_serial_sequence('loyalty.{table}', '{col}'), "
                        f"(SELECT max({col}) FROM loyalty.{table}))")
        conn.commit()
    with connect(dsn, autocommit=True) as conn:
        # What autovacuum does to a live platform's tables: statistics, and a visibility map so
        # the sync's member-range aggregates can read the covering index alone.
        with phase("VACUUM ANALYZE", total=len(_ALL_TABLES), unit="tables") as step:
            for t in _ALL_TABLES:
                conn.execute(f"VACUUM (ANALYZE) loyalty.{t}")
                step.advance()

    L = sim["L"]
    counts = {
        "programs": 1, "tiers": len(TIERS), "stores": len(store_codes), "segments": len(SEGMENTS),
        "members": sim["N"], "transactions": len(sim["T"]["member"]), "redemptions": len(sim["R"]["member"]),
        "points_ledger": len(L["kind"]), "member_tier_changes": len(sim["tier_ch"]["member"]),
        "member_status_changes": len(sim["status_ch"]["member"]),
        "segment_memberships": len(sim["seg"]["member"]),
    }
    kinds = np.bincount(L["kind"], minlength=4)
    etypes = np.bincount(L["etype"][L["etype"] >= 0], minlength=4)
    total = time.perf_counter() - t0
    summary = GenerationSummary(
        program_id=program_id, members=members, days=days, seed=seed, time_zone=time_zone,
        end_date=end_date.isoformat(), first_night=first.isoformat(),
        last_night=(end_date - dt.timedelta(days=1)).isoformat(),
        nights=[(first + dt.timedelta(days=i)).isoformat() for i in range(days)],
        tables=counts, ledger_entry_types={ENTRY_TYPES[i]: int(kinds[i]) for i in range(4)},
        earning_types={EARNING_TYPES[i]: int(etypes[i]) for i in range(4)},
        seconds=round(total, 3), seconds_build=round(t_build, 3), seconds_load=round(total - t_build, 3),
    )
    log.debug("generated program %s: %s in %.1fs", program_id, counts, total)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="loyalty-moengage-dev generate",
                                 description="Generate a deterministic synthetic loyalty program.")
    ap.add_argument("--dsn", help="libpq URI (default: the configured loyalty database)")
    ap.add_argument("--members", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--program", default="demo")
    ap.add_argument("--end-date", type=dt.date.fromisoformat, default=None)
    ap.add_argument("--time-zone", default="Asia/Kolkata")
    ap.add_argument("--no-replace", action="store_true")
    ap.add_argument("--nights", action="store_true", help="include the list of nights in the JSON")
    args = ap.parse_args(argv)
    dsn = args.dsn
    if not dsn:
        from loyalty_moengage.db import loyalty_dsn

        dsn = loyalty_dsn()
    s = generate(dsn, program_id=args.program, members=args.members, days=args.days, seed=args.seed,
                 end_date=args.end_date, time_zone=args.time_zone, replace=not args.no_replace)
    d = s.to_dict()
    if not args.nights:
        d.pop("nights")
    json.dump(d, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
