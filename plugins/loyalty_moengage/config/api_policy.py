"""What a program lets MoEngage do through the API (the ``api:`` block of a program in the
programs file): caps on the points it can credit, whose profile values win, and what a
Content API call for a non-member answers.

The caps exist because the connector's write key sits in a campaign anyone in the MoEngage
workspace can edit: whatever that key is, it can at worst credit ``max_points_per_purchase`` per
purchase and ``max_points_per_member_per_day`` per member per day (the program's day, in its time
zone). A credit over a cap is cut to it, and the answer says so (``points_capped``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NON_MEMBER_ANSWERS = ("not_found", "default")
PROFILE_UPDATES = ("fill_blanks", "overwrite")


class ApiPolicy(BaseModel):
    """Defaults are those of a program that sets nothing: safe for money, the platform's record wins."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    # Points one purchase can earn through the connector (amount x earn_rate is cut to this).
    max_points_per_purchase: int = Field(10_000, ge=1)
    # Points one member can earn through the connector in one day of the program's time zone.
    max_points_per_member_per_day: int = Field(50_000, ge=1)
    # not_found: a Content API call for a non-member (or an unreadable phone) answers 404, and
    # MoEngage drops that user's message unless the template has a fallback; default: 200 with
    # points 0 and "member": false, so the campaign still sends.
    non_member_answer: Literal["not_found", "default"] = "not_found"
    # fill_blanks: a campaign's name, email or gender only fills what the loyalty platform left
    # empty; overwrite: a non-empty campaign value replaces the platform's (the old behaviour).
    profile_updates: Literal["fill_blanks", "overwrite"] = "fill_blanks"


DEFAULT_POLICY = ApiPolicy()
