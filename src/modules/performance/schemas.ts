import { Type } from 'typebox';

/** The request and answer shapes of the performance routes (validation and the OpenAPI document). */

/** The reports' bodies: documented as objects, their fields follow the tracker's figures. */
export const Anything = Type.Record(Type.String(), Type.Unknown());

export const WindowQuery = Type.Object({ window: Type.Optional(Type.String({ enum: ['1m', '5m', '1h'] })) });

/** A dashboard asset by name (the page itself is not in the document). */
export const AssetParams = Type.Object({ name: Type.String({ maxLength: 64 }) });
