-- Email consent and an address; an email click or a push open in [as_of - 30d, as_of).
SELECT user_id
FROM users
WHERE email_consent
  AND email IS NOT NULL
  AND user_id IN (
    SELECT user_id FROM events
    WHERE event IN ('email_click', 'push_open') AND ts >= as_of() - INTERVAL 30 DAY
)
