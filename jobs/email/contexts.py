"""What each template accepts: one pydantic model per template, in the platform's own names.

The web app sends camelCase (`firstName`, `resetLink`, `expiresIn`, ...), so those are the
names here; each field also accepts its snake_case form, and a few older names of ours are
kept as aliases (`name` for the recipient's first name, `*_url` for links). A context is
checked when the email job is enqueued: a missing or mistyped field is refused then, naming
the template, the field and what it accepts. Unknown fields are refused too, so a typo in an
optional field does not vanish silently. `send_email`'s JSON Schema carries every model (per
`template`), which is how the schema export documents them.

Links the platform does not send (a dashboard, a ticket page) default to pages under
`APP_URL` when the message is rendered.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "KNOWN_PLANS",
    "RELEASE_STATUSES",
    "TEMPLATE_CONTEXTS",
    "TICKET_STATUSES",
    "CollaborationInviteContext",
    "EmailVerificationContext",
    "GeneralInviteContext",
    "PasswordResetContext",
    "PaymentFailedContext",
    "ReleaseStatusContext",
    "SubscriptionContext",
    "SupportTicketContext",
    "SupportTicketReplyContext",
    "SupportTicketStatusContext",
    "TeamInviteContext",
    "TemplateContext",
    "WeeklyDigestContext",
    "WelcomeContext",
]


def _http_link(value: str) -> str:
    # Only web links: a `javascript:` or `data:` URL from a caller must not become a button.
    if not re.match(r"https?://[^\s/]", value) or any(ch.isspace() for ch in value):
        raise ValueError(f"{value[:80]!r} is not an http(s) link")
    return value


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10_000)]
Link = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2048), AfterValidator(_http_link)]
Address = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
]
Count = Annotated[int, Field(ge=0)]


def _names(*names: str) -> Any:
    """The field's camelCase name first (for the schema), then the other names it accepts."""
    return AliasChoices(*names)


class TemplateContext(BaseModel):
    """Base of every context: camelCase names (snake_case accepted), unknown fields refused."""

    # Built at first validation, not at import: 20 models a process that sends no templated mail
    # (the CLI, a producer of other jobs, a worker of other queues) never uses (issue 18).
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, defer_build=True
    )

    def variables(self) -> dict[str, Any]:
        """What the template sees: the fields by their Python (snake_case) names."""
        return {name: getattr(self, name) for name in type(self).model_fields}


# -- accounts ----------------------------------------------------------------------------------


class WelcomeContext(TemplateContext):
    """`welcome`: a new account is ready."""

    first_name: Text = Field(validation_alias=_names("firstName", "first_name", "name"))
    email: Address | None = Field(
        None, description="the recipient; accepted as the platform sends it, not shown"
    )
    dashboard_url: Link | None = Field(
        None,
        validation_alias=_names("dashboardUrl", "dashboard_url"),
        description="default: APP_URL/dashboard",
    )


class EmailVerificationContext(TemplateContext):
    """`email_verification`: confirm the address of a new account."""

    first_name: Text = Field(validation_alias=_names("firstName", "first_name", "name"))
    verify_link: Link = Field(
        validation_alias=_names("verifyLink", "verify_link", "verificationLink", "verify_url")
    )
    expires_in: Text = Field("24 hours", description="free text, e.g. '24 hours'")


class PasswordResetContext(TemplateContext):
    """`password_reset`: the platform's forgot-password email."""

    first_name: Text = Field(validation_alias=_names("firstName", "first_name", "name"))
    reset_link: Link = Field(validation_alias=_names("resetLink", "reset_link", "reset_url"))
    expires_in: Text = Field("1 hour", description="free text as the platform sends it, e.g. '1 hour'")


# -- billing -----------------------------------------------------------------------------------

# Plans with a fixed price: a context naming one may leave out `amount`.
KNOWN_PLANS: dict[str, tuple[str, str, str]] = {
    "monthly": ("Monthly", "$49", "per month"),
    "yearly": ("Yearly", "$468", "per year"),
    "lifetime": ("Lifetime", "$699", "one-time payment"),
}


def _amount(value: str | float | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return f"${value:,.2f}"


Amount = Annotated[str | float, AfterValidator(_amount)]


class _Billing(TemplateContext):
    first_name: Text = Field(validation_alias=_names("firstName", "first_name", "name"))
    plan: Text = Field(
        description="free text as shown to the user; monthly, yearly or lifetime get their label"
    )
    amount: Amount | None = Field(
        None,
        description="as the platform formats it ('$49'), or a number of dollars; needed unless plan is known",
    )

    @model_validator(mode="after")
    def _priced(self) -> Self:
        if self.amount is None and self.plan.lower() not in KNOWN_PLANS:
            known = ", ".join(KNOWN_PLANS)
            raise ValueError(f"'amount' is required for plan {self.plan!r} (only {known} have a known price)")
        return self

    @property
    def plan_label(self) -> str:
        known = KNOWN_PLANS.get(self.plan.lower())
        return known[0] if known else self.plan

    @property
    def price(self) -> str:
        if self.amount is not None:
            return str(self.amount)
        return KNOWN_PLANS[self.plan.lower()][1]  # a known plan: checked by _priced

    @property
    def billing(self) -> str | None:
        known = KNOWN_PLANS.get(self.plan.lower())
        return known[2] if known and self.amount is None else None

    def variables(self) -> dict[str, Any]:
        return {
            **super().variables(),
            "plan_label": self.plan_label,
            "price": self.price,
            "billing": self.billing,
        }


class SubscriptionContext(_Billing):
    """`subscription_confirmation` and `payment_receipt`: a subscription is active, a payment
    went through. Only `firstName`, `plan` and `amount` are needed (what the platform has);
    the receipt details are shown when given."""

    next_billing_date: Text | date | None = Field(
        None, description="free text or a date; without it the plan is shown as lifetime access"
    )
    invoice_number: Text | None = None
    paid_on: Text | date | None = None
    card_last4: Annotated[str, StringConstraints(pattern=r"^[0-9]{4}$")] | None = None
    receipt_url: Link | None = Field(
        None, validation_alias=_names("receiptUrl", "receipt_url", "receiptLink")
    )


class PaymentFailedContext(_Billing):
    """`payment_failed`: a charge did not go through."""

    retry_on: Text | date | None = None
    update_payment_link: Link | None = Field(
        None,
        validation_alias=_names("updatePaymentLink", "update_payment_link", "update_payment_url"),
        description="default: APP_URL/settings/billing",
    )


# -- distribution ------------------------------------------------------------------------------

RELEASE_STATUSES: dict[str, tuple[str, str]] = {
    # status: (subject title, sentence)
    "submitted": ("Release submitted", "has been submitted for distribution"),
    "processing": ("Release processing", "is being processed by the stores"),
    "in_review": ("Release in review", "is in review by the stores"),
    "live": ("Your release is live", "is live in stores"),
    "failed": ("Distribution failed", "could not be distributed"),
    "rejected": ("Release rejected", "was rejected by a store"),
    "taken_down": ("Release taken down", "has been taken down"),
}
ReleaseStatus = Literal["submitted", "processing", "in_review", "live", "failed", "rejected", "taken_down"]


class ReleaseStatusContext(TemplateContext):
    """`release_status`: the platform's distribution notification (submitted, processing, live,
    failed; also in_review, rejected, taken_down)."""

    first_name: Text = Field(validation_alias=_names("firstName", "first_name", "name"))
    release_name: Text = Field(validation_alias=_names("releaseName", "release_name", "release_title"))
    status: ReleaseStatus
    platforms: list[Text] = Field(
        default_factory=list, max_length=100, validation_alias=_names("platforms", "stores")
    )
    error_message: LongText | None = Field(
        None,
        validation_alias=_names("errorMessage", "error_message", "note"),
        description="shown when the status is failed or rejected",
    )
    artist_name: Text | None = None
    release_link: Link | None = Field(
        None,
        validation_alias=_names("releaseLink", "release_link", "release_url"),
        description="default: APP_URL/distribution",
    )

    def variables(self) -> dict[str, Any]:
        title, sentence = RELEASE_STATUSES[self.status]
        return {**super().variables(), "status_title": title, "status_sentence": sentence}


# -- invitations -------------------------------------------------------------------------------


class _Invite(TemplateContext):
    inviter_name: Text
    inviter_email: Address
    invite_link: Link | None = Field(None, validation_alias=_names("inviteLink", "invite_link"))
    message: LongText | None = Field(None, description="a personal note from the inviter")


class CollaborationInviteContext(_Invite):
    """`collaboration_invite`: someone invites the recipient to a project (link default:
    APP_URL)."""

    project_name: Text
    role: Text = "Collaborator"


class TeamInviteContext(_Invite):
    """`team_invite`: someone invites the recipient to their team or workspace (link default:
    APP_URL)."""

    role: Text = "Team Member"
    team_name: Text | None = Field(None, validation_alias=_names("teamName", "team_name", "workspaceName"))
    expires_in: Text | None = Field(None, description="free text, e.g. '7 days'")


class GeneralInviteContext(_Invite):
    """`general_invite`: someone invites the recipient to Max Booster (link default:
    APP_URL/pricing)."""


# -- support tickets ---------------------------------------------------------------------------


class SupportTicketContext(TemplateContext):
    """`support_ticket_created`: the ticket was received (link default:
    APP_URL/support/tickets/<ticketId>)."""

    user_name: Text = Field(validation_alias=_names("userName", "user_name", "firstName", "name"))
    ticket_subject: Text
    ticket_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
    ticket_link: Link | None = Field(None, validation_alias=_names("ticketLink", "ticket_link", "ticketUrl"))


class SupportTicketReplyContext(SupportTicketContext):
    """`support_ticket_replied`: staff replied; the email quotes the start of the reply."""

    reply_message: LongText


# The platform's ticket statuses and what the email says for each; any other is "updated to X".
TICKET_STATUSES: dict[str, str] = {
    "open": "Your ticket is open and waiting for our team.",
    "in_progress": "Our team is working on your ticket.",
    "resolved": "Your ticket has been resolved. Reply if anything is still not right.",
    "closed": "Your ticket has been closed.",
}


class SupportTicketStatusContext(SupportTicketContext):
    """`support_ticket_status`: the ticket's status changed (open, in_progress, resolved,
    closed, or any other status the platform uses)."""

    new_status: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)]

    def variables(self) -> dict[str, Any]:
        label = self.new_status.replace("_", " ")
        sentence = TICKET_STATUSES.get(self.new_status, f"Its status has been updated to {label}.")
        return {**super().variables(), "status_label": label, "status_sentence": sentence}


# -- weekly insights ---------------------------------------------------------------------------


class TopTrack(TemplateContext):
    title: Text
    streams: Count = 0


class Achievement(TemplateContext):
    name: Text
    description: LongText | None = None
    icon: Annotated[str, StringConstraints(max_length=16)] | None = None


class Recommendation(TemplateContext):
    title: Text
    description: LongText


class UpcomingPost(TemplateContext):
    platform: Text
    scheduled_at: datetime | Text
    content: LongText


class Narrative(TemplateContext):
    headline: Text
    narrative: LongText


class WeeklyDigestContext(TemplateContext):
    """`weekly_digest`: the weekly insights email. Accepts the platform's weekly report as it
    is (`userName`, `streamsThisWeek`, `streamsChangePercent`, `topTrack`, `newFollowers`,
    `revenueEarned`, `achievementsUnlocked`, `aiRecommendation`, `upcomingPosts`, ...) and what
    the runner's own insights job adds: `topTracks` with titles, other `totals`, and the AI
    `narrative` when AI is configured."""

    user_name: Text = Field(validation_alias=_names("userName", "user_name", "firstName", "name"))
    week_label: Text | None = Field(None, description="e.g. '23 to 29 November'; shown in the subject")
    streams_this_week: Count = Field(
        validation_alias=_names("streamsThisWeek", "streams_this_week", "streams")
    )
    streams_last_week: Count | None = None
    streams_change: int | None = None
    streams_change_percent: float | None = Field(
        None, validation_alias=_names("streamsChangePercent", "streams_change_percent", "streams_change_pct")
    )
    new_followers: Count | None = Field(
        None, validation_alias=_names("newFollowers", "new_followers", "followers_gained")
    )
    revenue_earned: float | None = Field(None, ge=0, description="dollars")
    top_track: TopTrack | None = None
    top_tracks: list[TopTrack] = Field(default_factory=list, max_length=10)
    totals: dict[Text, Count] = Field(
        default_factory=dict,
        max_length=30,
        description="other counts of the week by name, e.g. {'likes': 12}",
    )
    achievements_unlocked: list[Achievement] = Field(default_factory=list, max_length=10)
    ai_recommendation: Recommendation | None = None
    upcoming_posts: list[UpcomingPost] = Field(default_factory=list, max_length=10)
    narrative: Narrative | None = Field(None, description="the AI's headline and story of the week")
    highlights: list[Text] = Field(default_factory=list, max_length=10)
    dashboard_url: Link | None = Field(
        None,
        validation_alias=_names("dashboardUrl", "dashboard_url"),
        description="default: APP_URL/dashboard",
    )
    unsubscribe_url: Link | None = Field(None, validation_alias=_names("unsubscribeUrl", "unsubscribe_url"))
    # Sent by the platform with the report; accepted, not shown.
    user_id: Text | None = None
    user_email: Address | None = None


TEMPLATE_CONTEXTS: dict[str, type[TemplateContext]] = {
    "welcome": WelcomeContext,
    "email_verification": EmailVerificationContext,
    "password_reset": PasswordResetContext,
    "subscription_confirmation": SubscriptionContext,
    "payment_receipt": SubscriptionContext,
    "payment_failed": PaymentFailedContext,
    "release_status": ReleaseStatusContext,
    "collaboration_invite": CollaborationInviteContext,
    "team_invite": TeamInviteContext,
    "general_invite": GeneralInviteContext,
    "support_ticket_created": SupportTicketContext,
    "support_ticket_replied": SupportTicketReplyContext,
    "support_ticket_status": SupportTicketStatusContext,
    "weekly_digest": WeeklyDigestContext,
}
