"""Provider feedback: SendGrid's signed Event Webhook in, stored once, turned into what the engine uses.

Import from the submodules. This package imports nothing itself, so the webhook receiver does not pay for
loading Polars, nor the planner for the HTTP server.

- `receive`: `receive_sendgrid`, the plain function under the receiver: verify (`signature`, with SendGrid's own
  helper), parse (`payload`), store once by `sg_event_id` (`provider_events`), derive `facts` and `suppressions`;
- `server` and `python -m engine.feedback`: the HTTP receiver, POST /webhooks/sendgrid;
- `suppressions`: `suppressed(conn, channel, addresses)`, asked by the planner before a dispatch;
- `contract_events`: stored feedback as rows of our events contract and as a snapshot partition file;
- `meanings`: what each SendGrid event type means to us; `errors`: why a request is refused; `settings`.
"""
