-- Signed up in [as_of - 30d, as_of - 7d); at most one app open in [signed_up_at, min(signed_up_at + 7d, as_of)).
WITH opens AS (
    SELECT e.user_id, count(*) AS n
    FROM events e
    JOIN users u USING (user_id)
    WHERE e.event = 'app_open'
      AND e.ts >= u.signed_up_at
      AND e.ts < least(u.signed_up_at + INTERVAL 7 DAY, as_of())
    GROUP BY e.user_id
)
SELECT u.user_id
FROM users u
LEFT JOIN opens o USING (user_id)
WHERE u.signed_up_at < as_of() - INTERVAL 7 DAY
  AND u.signed_up_at >= as_of() - INTERVAL 30 DAY
  AND coalesce(o.n, 0) <= 1
