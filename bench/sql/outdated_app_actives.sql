-- App version 4.8.3 or 5.9.0, an app open in [as_of - 1d, as_of), push consent not true (a missing one counts).
SELECT user_id
FROM users
WHERE app_version IN ('4.8.3', '5.9.0')
  AND NOT coalesce(push_consent, false)
  AND user_id IN (SELECT user_id FROM events WHERE event = 'app_open' AND ts >= as_of() - INTERVAL 1 DAY)
