-- Push consent, and at least 2 app opens in [as_of - 7d, as_of).
SELECT user_id
FROM users
WHERE push_consent
  AND user_id IN (
    SELECT user_id FROM events
    WHERE event = 'app_open' AND ts >= as_of() - INTERVAL 7 DAY
    GROUP BY user_id HAVING count(*) >= 2
)
