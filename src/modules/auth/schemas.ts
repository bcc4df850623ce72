import { Type } from 'typebox';

export const Email = Type.String({ format: 'email', minLength: 3, maxLength: 254 });
export const Password = Type.String({ minLength: 8, maxLength: 256, description: '8 to 256 characters' });
export const DisplayName = Type.String({ minLength: 1, maxLength: 100, pattern: '\\S' });

export const User = Type.Object(
  {
    id: Type.String({ format: 'uuid' }),
    email: Type.String(),
    display_name: Type.String(),
    role: Type.Union([Type.Literal('user'), Type.Literal('admin')]),
    credits_balance: Type.Integer(),
    created_at: Type.String({ format: 'date-time' }),
  },
  { $id: 'User' },
);

export const TokenPair = Type.Object({
  user: Type.Ref('User'),
  access_token: Type.String(),
  refresh_token: Type.String(),
  token_type: Type.Literal('Bearer'),
  expires_in: Type.Integer({ description: 'Access token lifetime in seconds' }),
});

export const RegisterBody = Type.Object(
  { email: Email, password: Password, display_name: Type.Optional(DisplayName) },
  { additionalProperties: false },
);
export const LoginBody = Type.Object(
  {
    email: Type.String({ minLength: 1, maxLength: 254 }),
    password: Type.String({ minLength: 1, maxLength: 256 }),
  },
  { additionalProperties: false },
);
export const RefreshBody = Type.Object(
  { refresh_token: Type.String({ minLength: 1, maxLength: 512 }) },
  { additionalProperties: false },
);
export const ProfileBody = Type.Object(
  { display_name: Type.Optional(DisplayName) },
  { additionalProperties: false, minProperties: 1 },
);
export const PasswordBody = Type.Object(
  { current_password: Type.String({ minLength: 1, maxLength: 256 }), new_password: Password },
  { additionalProperties: false },
);

/** How many sessions a logout-all or a password change ended. */
export const RevokedSessions = Type.Object({ revoked_sessions: Type.Integer() });
